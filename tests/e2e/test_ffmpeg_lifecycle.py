"""FFmpeg as a node runs it: a hung FFmpeg is stopped and its job retried, and the FFmpeg a node
uses is one it can trust (version policy). Real ``farm-node`` processes on the test's embedded
Redis, SQLite and folder storage; real signals to FFmpeg alone. (FFmpeg dying with its node:
tests/e2e/test_node_death.py and tests/farm_node/test_ffmpeg_runner.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import psutil

from farm.domain.media import ffmpeg_version
from tests.bull import bull_job
from tests.clips import ffmpeg_claiming
from tests.e2e.helpers import LONG_JOB, json_lines, metrics, node_info, run_cli, submit, wait_for
from tests.e2e.test_node_death import FAST, running_on

STALL_S = 5  # short for the test; a loaded 2-core machine still moves a healthy FFmpeg within it


def old_ffmpeg(folder: Path) -> Path:
    return ffmpeg_claiming(folder, "4.4.2-0ubuntu0.22.04.1")  # Ubuntu 22.04's


# -- a hung FFmpeg -----------------------------------------------------------------------------------


def test_a_hung_ffmpeg_is_stopped_and_its_job_retried(local_farm, farm, long_clip):
    (node,) = local_farm(1, extra=[*FAST, "--progress-timeout", str(STALL_S)])
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running_on(farm, job_id, [node]), timeout=60, what="the job to run")
    (ffmpeg,) = node.ffmpeg_children()
    ffmpeg.send_signal(signal.SIGSTOP)  # FFmpeg alone: the node goes on renewing the job's lock
    stopped_at = time.monotonic()

    said = f"FFmpeg made no progress for {STALL_S} s; stopped it"
    row = wait_for(
        lambda: said in ((j := farm.show(job_id).to_json())["error"] or "") and j,
        timeout=STALL_S + 30,
        what="the row to say why the attempt failed",
    )
    print(
        f"the row said why {time.monotonic() - stopped_at:.1f} s after FFmpeg was stopped "
        f"(timeout {STALL_S} s, at {row['progress']} %)"
    )
    assert row["error"].startswith("attempt 1 of 3 failed, will retry: ")
    assert not ffmpeg.is_running() or ffmpeg.status() == "zombie", "the hung FFmpeg is gone"

    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=180,
        what="the retry to finish",
    )
    assert (job["status"], job["attempts"], job["node"]) == ("completed", 2, node.name)
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert (state, bull.attemptsStarted, bull.stalledCounter) == ("completed", 2, 0), "retried, not stalled"
    log = node.log.read_text()
    assert [line for line in log.splitlines() if said in line][0].endswith(
        "(run 1); the job is retried while attempts remain"
    )
    assert metrics(node.name)[("worker_ffmpeg_stalls_total", frozenset({("node", node.name)}))] == 1


def test_progress_timeout_must_be_a_positive_number(settings):
    for bad in ("0", "-5", "nan", "inf"):
        refused = subprocess.run(
            [sys.executable, "-m", "farm_node", "--name", "n", "--progress-timeout", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, (bad, refused.stderr)
        assert refused.stderr.strip().splitlines() == [
            f"farm-node: --progress-timeout must be a positive number of seconds, got {bad}"
        ]
    shown = subprocess.run([sys.executable, "-m", "farm_node", "--help"], capture_output=True, text=True)
    assert "--progress-timeout SECONDS" in shown.stdout and "(default 600)" in " ".join(shown.stdout.split())


# -- which FFmpeg ------------------------------------------------------------------------------------


def test_an_old_ffmpeg_named_in_the_environment_is_refused(tmp_path, monkeypatch, settings):
    fake = old_ffmpeg(tmp_path / "old")
    monkeypatch.setenv("ENCODEFLOW_FFMPEG", str(fake))
    refused = subprocess.run(
        [sys.executable, "-m", "farm_node", "--name", "n"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"farm-node: FFmpeg 4.4.2-0ubuntu0.22.04.1 at {fake} (from ENCODEFLOW_FFMPEG or settings) is older than "
        "5.1, the oldest EncodeFlow runs; name a newer one, or unset it to use the bundled FFmpeg"
    ]
    assert not (settings.data_dir / "work").exists(), "refused before anything was set up"


def test_an_old_ffmpeg_on_path_is_passed_over_for_the_bundled_one(tmp_path, monkeypatch, local_farm, farm, clip):
    fake = old_ffmpeg(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    bundled = imageio_ffmpeg.get_ffmpeg_exe()
    (node,) = local_farm(1)

    log = node.log.read_text()
    warning = (
        f"FFmpeg 4.4.2-0ubuntu0.22.04.1 on PATH ({fake}) is older than 5.1; using the bundled FFmpeg "
        f"{ffmpeg_version(bundled)} ({bundled}) instead"
    )
    assert [line for line in log.splitlines() if "older than" in line] == [
        next(line for line in log.splitlines() if line.endswith(warning))
    ], "one warning"
    assert f"FFmpeg {ffmpeg_version(bundled)} at {bundled}" in next(
        line for line in log.splitlines() if " up: " in line
    )
    info = node_info(node.name)
    assert (info["ffmpeg_version"], info["ffmpeg_path"]) == (ffmpeg_version(bundled), bundled)
    build = next(labels for (name, labels) in metrics(node.name) if name == "encodeflow_build_info")
    assert {("ffmpeg_version", ffmpeg_version(bundled)), ("ffmpeg_path", bundled)} <= build

    job_id = submit(clip)
    job = wait_for(
        lambda: (j := farm.show(job_id).to_json())["status"] in ("completed", "failed") and j,
        timeout=120,
        what="the job to finish",
    )
    assert job["status"] == "completed", job["error"]


# -- other children that could outlive their parent ----------------------------------------------------


def test_the_nodes_of_a_killed_encodeflow_up_drain_and_exit():
    """`encodeflow up` SIGKILLed (its nodes are in sessions of their own, out of a group kill's reach):
    each node gets the SIGTERM of a drain and exits, rather than run on with no one to stop it."""
    up = subprocess.Popen(
        [sys.executable, "-m", "farm", "up", "--nodes", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node = None
    try:
        (info,) = wait_for(
            lambda: [n for n in json_lines(run_cli("nodes", "--json").stdout) if n["status"] != "offline"],
            timeout=60,
            what="the node to register",
        )
        node = psutil.Process(info["pid"])
        up.kill()
        up.wait(10)
        wait_for(
            lambda: not node.is_running() or node.status() == psutil.STATUS_ZOMBIE,
            timeout=30,
            what="the node of the killed `encodeflow up` to exit",
        )
        output = up.stdout.read()  # the node wrote its log there too, until it exited
    finally:
        up.kill()
        if node is not None and node.is_running():
            node.kill()
    assert "draining" in output and f"node {info['name']} stopped" in output
