"""Nodes that die mid-job, runs that lost their lock, jobs whose nodes keep dying.

Real ``farm-node`` processes on the test's embedded Redis, SQLite and folder storage, with short
BullMQ timing (lock 5 s, stalled check every 3 s) so that recovery takes seconds, not minutes.
Faults are real: SIGKILL of the node and of FFmpeg's process group (what a reboot does to both),
SIGKILL of the node alone (its FFmpeg must die with it), SIGSTOP/SIGCONT (an event loop frozen past its lock).
What is asserted is what a user or an admin sees: the job's row (``Farm.show``), BullMQ's record
of the job, the objects in storage, the processes and files left on the machine.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from farm.client import Farm
from farm.domain.object_keys import output_prefix
from farm.services.storage import open_storage
from farm_node.workdir import entries
from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, json_lines, run_cli, submit, wait_for

LOCK_S, STALLED_S = 5, 3
FAST = [
    "--lock-seconds",
    str(LOCK_S),
    "--stalled-interval-seconds",
    str(STALLED_S),
    "--reconcile-interval-seconds",
    "2",
]
# Worst case from a death to another node's start: the lock runs out (<= LOCK_S after the last
# renewal), then the next stalled check moves the job back (<= STALLED_S). The rest is slack
# for a shared 2-core machine.
RECOVERY_BOUND_S = LOCK_S + STALLED_S + 20


def outputs_in_storage(local_farm, job_id: str) -> list[str]:
    storage = open_storage(local_farm.settings.effective_storage_url)
    return [obj.key for obj in storage.list(output_prefix(job_id))]


def running_on(farm: Farm, job_id: str, nodes) -> object | None:
    """The node among ``nodes`` that is transcoding the job now (active, FFmpeg past its start)."""
    job = farm.show(job_id).to_json()
    if job["status"] != "active" or job["progress"] <= 0:
        return None
    return next((n for n in nodes if n.name == job["node"] and n.ffmpeg_children()), None)


def kill_like_a_reboot(node) -> list[psutil.Process]:
    """SIGKILL the node and its FFmpeg's process group, as a power cut would; returns the FFmpegs."""
    ffmpeg = node.ffmpeg_children()  # found before the kill: afterwards they are init's children
    node.proc.kill()
    for proc in ffmpeg:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # FFmpeg leads its own group (start_new_session)
        except ProcessLookupError:
            pass
    node.proc.wait(10)
    return ffmpeg


def gone(processes: list[psutil.Process]) -> bool:
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def wait_for_new_run(farm: Farm, job_id: str, not_on: str, since: float, timeout: float) -> tuple[str, float]:
    """Wait until a node other than ``not_on`` runs the job; returns (node, seconds since ``since``)."""

    def picked():
        job = farm.show(job_id).to_json()
        return job["node"] if job["status"] == "active" and job["node"] not in (None, not_on) else None

    node = wait_for(picked, timeout=timeout, interval=0.05, what=f"another node than {not_on} to run the job")
    return node, time.monotonic() - since


# -- the timing knobs --------------------------------------------------------------------------------


def test_recovery_timing_is_set_from_the_command_line_and_the_lock_is_renewed_at_half(settings):
    import subprocess
    import sys

    from farm.domain import defaults
    from farm_node.agent import FarmNode
    from farm_node.cli import build_parser

    shown = subprocess.run([sys.executable, "-m", "farm_node", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    help_text = " ".join(shown.stdout.split())
    for flag in (
        "--lock-seconds S",
        "--stalled-interval-seconds S",
        "--max-stalled N",
        "--reconcile-interval-seconds S",
        "advanced",
    ):
        assert flag in help_text
    # One home for the defaults (farm.domain.defaults): the command line's and the node's are the same.
    flags = build_parser().parse_args([])
    node = FarmNode(settings, name="n")
    assert (
        (flags.lock_seconds, flags.stalled_interval_seconds, flags.max_stalled, flags.reconcile_interval_seconds)
        == (node.lock_seconds, node.stalled_interval_seconds, node.max_stalled, node.reconcile_interval_seconds)
        == (
            defaults.LOCK_SECONDS,
            defaults.STALLED_INTERVAL_SECONDS,
            defaults.MAX_STALLED_COUNT,
            defaults.RECONCILE_INTERVAL_S,
        )
        == (60.0, 30.0, 3, 30.0)
    ), "the defaults are unchanged"

    default = node.worker_options()
    assert (
        default["lockDuration"],
        default["lockRenewTime"],
        default["stalledInterval"],
        default["maxStalledCount"],
    ) == (60_000, 30_000, 30_000, 3)
    fast = FarmNode(settings, name="n", lock_seconds=5, stalled_interval_seconds=3, max_stalled=1).worker_options()
    assert (fast["lockDuration"], fast["lockRenewTime"], fast["stalledInterval"], fast["maxStalledCount"]) == (
        5000,
        2500,
        3000,
        1,
    )

    for bad in (["--lock-seconds", "0.5"], ["--stalled-interval-seconds", "0"], ["--max-stalled", "-1"]):
        refused = subprocess.run(
            [sys.executable, "-m", "farm_node", "--name", "n", *bad], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2, (bad, refused.stderr)
        assert bad[0] in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


# -- a node dies ----------------------------------------------------------------------------------


def test_a_node_killed_mid_job_is_replaced_and_the_job_completes_once(local_farm, farm, long_clip):
    nodes = local_farm(2, extra=FAST)
    job_id = submit(long_clip, *LONG_JOB)
    victim = wait_for(lambda: running_on(farm, job_id, nodes), timeout=60, what="the job to run")
    survivor = next(n for n in nodes if n is not victim)
    assert entries(victim.work_dir), "the running job has its files in the node's work dir"

    ffmpeg = kill_like_a_reboot(victim)
    killed_at = time.monotonic()
    node, recovery = wait_for_new_run(farm, job_id, victim.name, killed_at, timeout=RECOVERY_BOUND_S)
    print(f"recovery: the job ran again on {node} {recovery:.1f} s after its node was killed")
    assert node == survivor.name

    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=120,
        what="the job to finish",
    )
    assert (job["status"], job["node"], job["attempts"], job["error"]) == ("completed", survivor.name, 2, None)
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.attemptsStarted, bull.stalledCounter) == ("completed", 2, 1)
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]], "exactly one output, the row's"
    assert "/attempt-2/" in job["output"]["key"]
    assert gone(ffmpeg)

    assert entries(victim.work_dir), "the dead run's files are still there before the restart"
    local_farm.start_named(victim.name, extra=FAST)
    assert entries(victim.work_dir) == [], "a restarted node sweeps what its dead run left"
    assert farm.show(job_id).to_json()["finished_at"] == job["finished_at"], "the job is finished once"


def test_ffmpeg_dies_with_its_node_killed_alone(local_farm, farm, long_clip):
    (node,) = local_farm(1, extra=FAST)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")
    ffmpeg = node.ffmpeg_children()
    assert ffmpeg and all(os.getsid(p.pid) == p.pid for p in ffmpeg), "FFmpeg runs in a session of its own"

    node.proc.kill()  # the node only (OOM killer, kill -9): FFmpeg's session is out of a group kill's reach
    killed_at = time.monotonic()
    wait_for(lambda: gone(ffmpeg), timeout=3, interval=0.05, what="FFmpeg to die with its node")
    print(f"FFmpeg gone {time.monotonic() - killed_at:.2f} s after its node's SIGKILL")
    node.proc.wait(10)

    local_farm.start_named(node.name, extra=FAST)

    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=120,
        what="the job to finish",
    )
    assert (job["status"], job["node"], job["attempts"]) == ("completed", node.name, 2)
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]]


@pytest.mark.slow
def test_a_job_whose_nodes_keep_dying_fails_with_that_reason(local_farm, farm, long_clip):
    nodes = local_farm(2, extra=[*FAST, "--max-stalled", "1"])
    job_id = submit(long_clip, *LONG_JOB)
    first = wait_for(lambda: running_on(farm, job_id, nodes), timeout=60, what="the job to run")
    kill_like_a_reboot(first)
    second = next(n for n in nodes if n is not first)
    wait_for(
        lambda: running_on(farm, job_id, [second]), timeout=RECOVERY_BOUND_S + 30, what="the second node to run the job"
    )
    kill_like_a_reboot(second)
    assert farm.show(job_id).status == "active", "no code of ours saw the deaths"

    restarted_at = time.monotonic()
    local_farm.start_named(first.name, extra=[*FAST, "--max-stalled", "1"])
    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] != "active" and j,
        timeout=RECOVERY_BOUND_S + 30,
        what="the job's row to leave active",
    )
    print(f"the row failed {time.monotonic() - restarted_at:.1f} s after a node came back")
    assert job["status"] == "failed"
    assert job["error"] == f"the node running it stopped responding 2 times; last node {second.name}"
    assert job["attempts"] == 2
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.failedReason) == ("failed", "job stalled more than allowable limit")
    assert outputs_in_storage(local_farm, job_id) == []

    result = run_cli("jobs", "--status", "failed", "--json")
    assert [j["id"] for j in json_lines(result.stdout)] == [job_id]


# -- a run that lost its lock -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_that_lost_its_lock_leaves_no_second_result(local_farm, farm, long_clip):
    nodes = local_farm(2, extra=FAST)
    job_id = submit(long_clip, *LONG_JOB)
    frozen = wait_for(lambda: running_on(farm, job_id, nodes), timeout=60, what="the job to run")
    other = next(n for n in nodes if n is not frozen)

    # Freeze it just after one of its progress writes, not in the middle of one: a process frozen
    # inside a database transaction would hold its lock and block every other node.
    last = farm.show(job_id).updated_at
    wait_for(lambda: farm.show(job_id).updated_at != last, timeout=10, interval=0.01, what="a progress write")
    frozen.proc.send_signal(signal.SIGSTOP)  # its event loop stops; its FFmpeg goes on
    try:
        wait_for_new_run(farm, job_id, frozen.name, time.monotonic(), timeout=RECOVERY_BOUND_S)
        won = wait_for(
            lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
            timeout=120,
            what="the other node to finish the job",
        )
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert (won["status"], won["node"], won["attempts"]) == ("completed", other.name, 2)

    # The frozen run wakes up, finds its lock gone (its FFmpeg finished meanwhile), uploads nothing
    # and leaves the job as the winner left it (tests/e2e/test_lost_lock.py: woken mid-transcode).
    wait_for(
        lambda: "lost its lock to another run" in frozen.log.read_text(),
        timeout=90,
        what="the late run to give up its result",
    )
    job = farm.show(job_id).to_json()
    assert {k: job[k] for k in ("status", "node", "attempts", "finished_at", "output")} == {
        k: won[k] for k in ("status", "node", "attempts", "finished_at", "output")
    }, "the row is finished once"
    assert outputs_in_storage(local_farm, job_id) == [job["output"]["key"]], "the late run left no second result"
    assert "/attempt-2/" in job["output"]["key"]
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert state == "completed"
    assert bull.returnvalue["outputs"][0]["key"] == job["output"]["key"]
    assert frozen.proc.poll() is None, "the late run's node carries on"
    wait_for(lambda: entries(frozen.work_dir) == [], timeout=10, what="the late run's work dir to be emptied")
