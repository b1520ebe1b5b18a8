"""A farm node as an admin runs it: signals, remote control, metrics, its work dir.

Each test starts real ``farm-node`` processes on the test's embedded Redis (``local_farm``) and
drives them the way an admin would: ``kill -TERM``, ``encodeflow node ...``, ``encodeflow nodes``,
``curl /metrics``. What is asserted is what the admin sees: the job's row, the node list, the
node's exit code, the processes left, the files left.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import psutil
import pytest
import redis

from farm.base.ports import free_port
from farm.client import Farm
from farm.domain.nodes import NodeStatus
from farm.services.registry import NodeRegistry
from farm_node.workdir import entries
from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, json_lines, run_cli, submit, wait_for

SHORT_JOB = ("--format", "mp4", "--resolution", "360p")


@pytest.fixture
def registry(local_farm):
    """The node list the CLI reads, polled directly: a CLI call per poll would be too coarse."""
    client = redis.Redis.from_url(local_farm.redis_url, decode_responses=True)
    yield NodeRegistry(client, local_farm.settings.queue)
    client.close()


def nodes() -> dict[str, dict]:
    result = run_cli("nodes", "--json")
    assert result.returncode == 0, result.stderr
    return {node["name"]: node for node in json_lines(result.stdout)}


def node_status(name: str) -> str | None:
    """The node's status as ``encodeflow nodes --json`` shows it."""
    return nodes().get(name, {}).get("status")


def shows(registry: NodeRegistry, name: str, status: str, timeout: float) -> None:
    """Wait until the node list shows ``status`` for the node, then check the CLI says so too."""
    wait_for(
        lambda: (registry.node(name) or NodeStatus(name, status="unknown")).status == status,
        timeout=timeout,
        interval=0.05,
        what=f"node {name} to show {status}",
    )
    assert node_status(name) == status


def running(farm: Farm, job_id: str) -> bool:
    """The job is transcoding: active with some progress (so FFmpeg is past its start-up)."""
    job = farm.show(job_id).to_json()
    return job["status"] == "active" and job["progress"] > 0


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def holds(predicate, seconds: float, interval: float = 0.25) -> bool:
    """True if ``predicate`` stays true for ``seconds`` (for "nothing happens" claims)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


def http_get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


# -- signals -----------------------------------------------------------------------------------


def test_sigterm_drains_the_running_job_and_takes_no_new_one(local_farm, registry, farm, long_clip, clip):
    (node,) = local_farm(1)
    first = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running(farm, first), timeout=60, what="the first job to run")
    second = submit(clip, *SHORT_JOB)  # waits behind the first: the node runs one job at a time

    node.proc.send_signal(signal.SIGTERM)
    shows(registry, node.name, "draining", timeout=3)
    assert farm.show(first).status == "active", "the running job must not be stopped"

    assert node.proc.wait(timeout=90) == 0
    done = farm.show(first).to_json()
    assert (done["status"], done["node"], done["attempts"]) == ("completed", node.name, 1)
    assert farm.show(second).status == "queued", "a draining node must take no new job"
    assert bull_job(local_farm.redis_url, local_farm.settings.queue, second)[0] == "waiting"
    assert entries(node.work_dir) == []
    assert node_status(node.name) == "offline"


def test_second_sigterm_hands_the_job_back_and_another_node_finishes_it(local_farm, registry, farm, long_clip):
    (first,) = local_farm(1)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running(farm, job_id), timeout=60, what="the job to run")
    ffmpeg = wait_for(first.ffmpeg_children, timeout=5, what="FFmpeg to run")

    first.proc.send_signal(signal.SIGTERM)
    # The second signal after the first was seen, as an admin would send it (two signals sent at
    # once may be merged into one by the kernel).
    shows(registry, first.name, "draining", timeout=3)
    stopped_at = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=15) == 0
    assert time.monotonic() - stopped_at < 15

    assert alive(ffmpeg) == [], "FFmpeg must be killed, not left behind"
    job = farm.show(job_id).to_json()
    assert (job["status"], job["node"], job["output"]) == ("queued", None, None)
    assert "handed back" in (job["error"] or "")
    state, bull = bull_job(local_farm.redis_url, local_farm.settings.queue, job_id)
    assert state == "waiting", f"the job must be back in the queue, not {state}"
    assert bull.attemptsMade == 0, "a hand-back must not use up an attempt"
    assert entries(first.work_dir) == []
    assert node_status(first.name) == "offline"

    (second,) = local_farm(1)
    wait_for(
        lambda: farm.show(job_id).status in ("completed", "failed"),
        timeout=90,
        what="the second node to finish the job",
    )
    job = farm.show(job_id).to_json()
    assert (job["status"], job["node"], job["attempts"], job["error"]) == ("completed", second.name, 1, None)
    assert job["output"]["size"] > 0


# -- remote control ------------------------------------------------------------------------------


def test_pause_resume_and_drain_from_the_cli(local_farm, registry, farm, clip, long_clip):
    (node,) = local_farm(1)

    result = run_cli("node", "pause", node.name)
    assert result.returncode == 0, result.stderr
    shows(registry, node.name, "paused", timeout=3)
    job_id = submit(clip, *SHORT_JOB)
    assert holds(lambda: farm.show(job_id).status == "queued", seconds=3), "a paused node must take no job"
    assert node_status(node.name) == "paused"

    result = run_cli("node", "resume", node.name)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: farm.show(job_id).status == "completed", timeout=30, what="the job to complete after resume")
    assert farm.show(job_id).node == node.name

    long_id = submit(long_clip, *LONG_JOB)
    wait_for(lambda: running(farm, long_id), timeout=60, what="the long job to run")
    result = run_cli("node", "drain", node.name)
    assert result.returncode == 0, result.stderr
    shows(registry, node.name, "draining", timeout=3)
    assert node.proc.wait(timeout=90) == 0
    assert farm.show(long_id).status == "completed"
    assert node_status(node.name) == "offline"

    # A finished drain is forgotten: the same node started again takes jobs at once.
    again = local_farm.start_named(node.name)
    shows(registry, node.name, "idle", timeout=5)
    job_id = submit(clip, *SHORT_JOB)
    wait_for(lambda: farm.show(job_id).status == "completed", timeout=30, what="the restarted node to work")
    assert again.stop() == 0


def test_control_of_an_unknown_node_exits_2_with_one_line(local_farm):
    (node,) = local_farm(1)
    for action in ("pause", "resume", "drain"):
        result = run_cli("node", action, "no-such-node")
        assert result.returncode == 2, (action, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "no-such-node" in lines[0] and node.name in lines[0], lines[0]
    assert node_status(node.name) == "idle", "a refused command must not touch other nodes"


def test_a_paused_node_comes_back_paused(local_farm, registry, clip, farm):
    (node,) = local_farm(1)
    assert run_cli("node", "pause", node.name).returncode == 0
    shows(registry, node.name, "paused", timeout=3)
    assert node.stop() == 0

    again = local_farm.start_named(node.name)
    shows(registry, node.name, "paused", timeout=5)
    job_id = submit(clip, *SHORT_JOB)
    assert holds(lambda: farm.show(job_id).status == "queued", seconds=2)
    assert run_cli("node", "resume", node.name).returncode == 0
    wait_for(lambda: farm.show(job_id).status == "completed", timeout=30, what="the job to complete")
    assert again.stop() == 0


# -- metrics and health ------------------------------------------------------------------------


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels...}`` in a Prometheus exposition (labels may be a subset)."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_metrics_and_health_of_a_live_node(local_farm, farm, clip):
    port = free_port()
    (node,) = local_farm(1, extra=["--metrics-port", str(port)])
    base = f"http://127.0.0.1:{port}"
    assert nodes()[node.name]["metrics_url"] == f"{base}/metrics"

    job_id = submit(clip, *SHORT_JOB)
    wait_for(lambda: farm.show(job_id).status == "completed", timeout=30, what="the job to complete")

    def scrape() -> str:
        return http_get(f"{base}/metrics")[2]

    wait_for(
        lambda: _sample(scrape(), "workers_jobs_processed_total", node=node.name, status="success") == 1.0,
        timeout=5,
        what="the finished job to be counted",
    )
    # queue_jobs is refreshed every few seconds; it must come to show the finished job.
    wait_for(
        lambda: _sample(scrape(), "queue_jobs", state="completed") == 1.0,
        timeout=15,
        what="queue_jobs to follow the queue",
    )
    status, content_type, text = http_get(f"{base}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert _sample(text, "workers_jobs_processed_total", node=node.name, status="failed") == 0.0
    assert _sample(text, "worker_job_duration_seconds_count", node=node.name, format="mp4", status="success") >= 1
    assert 0 <= _sample(text, "worker_cpu_usage", node=node.name) <= 100
    assert 0 < _sample(text, "worker_memory_usage_ratio", node=node.name) < 1
    assert _sample(text, "worker_active_jobs", node=node.name) == 0.0
    assert _sample(text, "queue_jobs", state="waiting") == 0.0
    assert _sample(text, "encodeflow_build_info", node=node.name) == 1.0

    status, content_type, body = http_get(f"{base}/health")
    assert status == 200 and content_type == "application/json"

    # /health reads the heartbeat's last beat (one a second): the job's end shows there by the next.
    def idle_health():
        health = json.loads(http_get(f"{base}/health")[2])
        return health if health["status"] == "idle" else None

    health = wait_for(idle_health, timeout=5, what="/health to show the node idle")
    assert (health["status"], health["node"], health["running"]) == ("idle", node.name, 0)


# -- the work dir --------------------------------------------------------------------------------


def test_startup_sweeps_what_an_earlier_run_left(local_farm, data_dir, tmp_path):
    work = data_dir / "work" / "node-1"  # where local_farm's first node works
    (first,) = local_farm(1)
    assert first.stop() == 0  # the work dir is now the node's (its marker is in it)
    (work / "job-crashed-1").mkdir(parents=True)
    (work / "job-crashed-1" / "input.mp4").write_bytes(b"\0" * 4096)
    (work / "stray.partial").write_text("not made by a node")
    outside = tmp_path / "not-the-nodes.txt"
    outside.write_text("keep me")
    (work / "link-out").symlink_to(outside)

    node = local_farm.start_named("node-1")

    assert node.work_dir == work
    assert [p.name for p in entries(work)] == ["link-out", "stray.partial"], (
        "a dead run's folder is gone once the node registers; what no node makes is left"
    )
    assert (
        "holds 2 thing(s) farm-node did not make, left as they are: 'link-out', 'stray.partial'" in node.log.read_text()
    )
    assert outside.read_text() == "keep me", "the sweep must not follow links out of the work dir"
