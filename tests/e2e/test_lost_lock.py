"""A node frozen past its job's lock, woken while another node runs the job again.

Two real ``farm-node`` processes on the test's embedded Redis, SQLite and folder storage, with the
short timing of the node-death tests (lock 5 s, stalled check 3 s). The node running the job is
frozen with SIGSTOP (the node's process only: its FFmpeg, in a process group of its own, runs on),
so its lock runs out and the other node takes the job; then it gets SIGCONT. Whatever the woken
run had done by then, the job must end completed once, by the node that holds it: one output in
storage (the row's), the row and BullMQ's return value naming the same output and node, and the
job counted once in ``/metrics`` across both nodes.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from farm.base.ports import free_port
from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, submit, wait_for
from tests.e2e.test_node_control import _sample, http_get
from tests.e2e.test_node_death import FAST, RECOVERY_BOUND_S, gone, outputs_in_storage, running_on, wait_for_new_run

pytestmark = pytest.mark.slow

LOST_LINE = "lost its lock to another run"
# The woken node's FFmpeg must stop this soon after SIGCONT: BullMQ's overdue renewal fails at
# once, and FFmpeg gets SIGTERM, then SIGKILL 2 s later. The rest is slack for a loaded machine.
STOP_BOUND_S = 10


def two_nodes(local_farm) -> list:
    """Two nodes, each with /metrics on a port of its own (node.metrics)."""
    nodes = []
    for _ in range(2):
        port = free_port()
        (node,) = local_farm(1, extra=[*FAST, "--metrics-port", str(port)])
        node.metrics = f"http://127.0.0.1:{port}/metrics"
        nodes.append(node)
    return nodes


def freeze_running_node(farm, job_id: str, nodes):
    """SIGSTOP the node running the job, just after one of its progress writes (a node frozen inside
    a database transaction would hold its lock and block every other node); returns it."""
    frozen = wait_for(lambda: running_on(farm, job_id, nodes), timeout=60, what="the job to run")
    last = farm.show(job_id).updated_at
    wait_for(lambda: farm.show(job_id).updated_at != last, timeout=10, interval=0.01, what="a progress write")
    frozen.proc.send_signal(signal.SIGSTOP)
    return frozen


def assert_completed_once_by(local_farm, farm, job_id: str, winner, loser) -> None:
    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed", "cancelled") and j,
        timeout=300,
        what="the job to finish",
    )
    assert (job["status"], job["node"], job["attempts"], job["error"]) == ("completed", winner.name, 2, None)
    assert "/attempt-2/" in job["output"]["key"], "the output of the run that holds the job"
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]], "the woken run uploaded nothing"
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert state == "completed"
    assert (bull.returnvalue["outputs"], bull.returnvalue["node"]) == (job["outputs"], winner.name), (
        "BullMQ's return value names the row's output and node"
    )

    def counted(node, status: str) -> float:
        return _sample(http_get(node.metrics)[2], "workers_jobs_processed_total", node=node.name, status=status)

    assert counted(winner, "success") + counted(loser, "success") == 1, "the job is counted once"
    assert [counted(loser, s) for s in ("failed", "cancelled")] == [0, 0], "the lost run is not an outcome"

    log = loser.log.read_text()
    assert log.count(LOST_LINE) == 1 and job_id in log.split(LOST_LINE)[0].splitlines()[-1], log
    assert "Traceback" not in log and "could not renew lock" not in log, log
    assert loser.proc.poll() is None, "the woken node carries on"
    wait_for(
        lambda: not [p for p in loser.work_dir.iterdir() if p.name.startswith(job_id)],
        timeout=10,
        what="the woken run's work files to be deleted",
    )


def test_a_node_woken_past_its_lock_stops_its_ffmpeg_at_once_and_leaves_the_job(local_farm, farm, make_clip):
    # Long enough that the frozen node's FFmpeg, which runs on, is still transcoding when it wakes.
    clip = make_clip(width=1280, height=720, seconds=20.0, name="lost_lock_20s_720p.mp4")
    nodes = two_nodes(local_farm)
    job_id = submit(clip, *LONG_JOB)
    frozen = freeze_running_node(farm, job_id, nodes)
    other = next(n for n in nodes if n is not frozen)
    try:
        ffmpeg = frozen.ffmpeg_children()
        wait_for_new_run(farm, job_id, frozen.name, time.monotonic(), timeout=RECOVERY_BOUND_S)
        assert ffmpeg and not gone(ffmpeg), "the frozen node's FFmpeg is still transcoding"
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    woke = time.monotonic()

    wait_for(lambda: gone(ffmpeg), timeout=STOP_BOUND_S, interval=0.05, what="the woken node's FFmpeg to stop")
    print(f"the woken node's FFmpeg stopped {time.monotonic() - woke:.1f} s after SIGCONT")
    assert_completed_once_by(local_farm, farm, job_id, winner=other, loser=frozen)


def test_a_node_that_wakes_with_its_transcode_done_leaves_the_job_to_the_run_that_holds_it(local_farm, farm, long_clip):
    """The woken run would finish first: its FFmpeg ended while its node was frozen, and the other
    node's run is held back until the woken one has acted."""
    nodes = two_nodes(local_farm)
    job_id = submit(long_clip, *LONG_JOB)
    frozen = freeze_running_node(farm, job_id, nodes)
    other = next(n for n in nodes if n is not frozen)
    held = []
    try:
        ffmpeg = frozen.ffmpeg_children()
        wait_for(
            lambda: running_on(farm, job_id, [other]),
            timeout=RECOVERY_BOUND_S,
            interval=0.05,
            what="the other node to run the job",
        )
        held = other.ffmpeg_children()
        for proc in held:  # FFmpeg leads its own process group
            os.killpg(proc.pid, signal.SIGSTOP)
        wait_for(lambda: gone(ffmpeg), timeout=60, what="the frozen node's FFmpeg to finish its transcode")
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    try:
        wait_for(
            lambda: LOST_LINE in frozen.log.read_text() or farm.show(job_id).status != "active",
            timeout=STOP_BOUND_S,
            what="the woken run to act",
        )
        assert farm.show(job_id).status == "active", "the woken run must not finish the job it lost"
    finally:
        for proc in held:
            os.killpg(proc.pid, signal.SIGCONT)
    assert_completed_once_by(local_farm, farm, job_id, winner=other, loser=frozen)
