"""Redis restarts: stopped for 30 s with its AOF kept, then started again on the same port.

Real ``farm-node`` processes on a private ``redis-server`` of the test's own (never the machine's
shared one), SQLite and folder storage. The fault is real: Redis is stopped with SHUTDOWN while two
jobs transcode and three wait, kept down, and started again on the same port and directory. What is
asserted is what a user or an admin sees: every job's row and BullMQ record, the outputs in
storage, the node list, the nodes' logs, and the events a listener started before the outage got.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import redis
from bullmq import Queue

from farm.base.settings import ENV_VARS
from farm.domain.object_keys import output_prefix
from farm.services.embedded import ensure_embedded_redis
from farm.services.events import JobEventListener
from farm.services.registry import NodeRegistry
from farm.services.storage import open_storage
from tests.bull import bull_job
from tests.e2e.helpers import LONG_JOB, json_lines, run_cli, wait_for
from tests.faults import RestartableRedis

OUTAGE_S = 30


class EventRecorder:
    """A job-event listener on its own thread, as the panel runs one, recording what it gets."""

    def __init__(self, redis_url: str, queue: str):
        self.listener = JobEventListener(redis_url, queue, block_ms=500)
        self.events: list = []  # (monotonic time received, JobEvent)
        self.thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)

    def _run(self) -> None:
        for event in self.listener.events():
            self.events.append((time.monotonic(), event))

    def __enter__(self) -> EventRecorder:
        self.thread.start()
        wait_for(lambda: self.listener.connected, timeout=10, what="the event listener to connect")
        return self

    def __exit__(self, *exc) -> None:
        self.listener.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the event listener did not stop"


@pytest.fixture
def private_redis(tmp_path, monkeypatch):
    server = RestartableRedis(tmp_path)
    server.start()
    monkeypatch.setenv(ENV_VARS["redis_url"], server.url)  # what the nodes and the CLI use
    yield server
    server.close()


def bull_records(redis_url: str, queue_name: str, job_ids: list[str]) -> dict[str, tuple]:
    """BullMQ's state and number of started runs of each job."""
    records = {}
    for job_id in job_ids:
        state, job = bull_job(redis_url, queue_name, job_id)
        records[job_id] = (state, job.attemptsStarted if job else None)
    return records


def bull_finish_times(redis_url: str, queue_name: str, job_ids: list[str]) -> dict[str, float]:
    """When BullMQ recorded each job as finished (epoch s)."""

    async def read():
        queue = Queue(queue_name, {"connection": redis_url})
        try:
            return {i: (await queue.getJob(i)).finishedOn / 1000 for i in job_ids}
        finally:
            await queue.close()

    return asyncio.run(read())


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def ended(jobs: list[dict]) -> list[dict] | None:
    return jobs if all(j["status"] in ("completed", "failed", "cancelled") for j in jobs) else None


def submit_many(*args: str) -> list[str]:
    result = run_cli("submit", *args, "--json")
    assert result.returncode == 0, result.stderr
    return [job["id"] for job in json_lines(result.stdout)]


def copies(path: Path, directory: Path, count: int) -> list[str]:
    directory.mkdir(exist_ok=True)
    made = []
    for index in range(count):
        made.append(directory / f"{path.stem}-{index + 1}{path.suffix}")
        shutil.copy(path, made[-1])
    return [str(p) for p in made]


@pytest.mark.slow
def test_a_redis_restart_loses_no_job_and_the_farm_carries_on(
    private_redis, local_farm, farm, long_clip, clip, tmp_path
):
    settings = local_farm.settings
    assert settings.redis_url == private_redis.url
    registry_client = redis.Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=5)
    registry = NodeRegistry(registry_client, settings.queue)
    nodes = local_farm(2)  # default timing: a 60 s lock outlasts the 30 s outage
    pids = {n.name: n.proc.pid for n in nodes}

    with EventRecorder(private_redis.url, settings.queue) as recorder:
        # Two long jobs keep both nodes (concurrency 1) busy, so the short ones are still waiting
        # in the queue when Redis goes away.
        long_ids = submit_many(*copies(long_clip, tmp_path / "long", 2), *LONG_JOB)
        wait_for(
            lambda: all((j := farm.show(i)).status == "active" and j.progress > 0 for i in long_ids),
            timeout=90,
            what="both long jobs to transcode",
        )
        short_ids = submit_many(*copies(clip, tmp_path / "short", 3), "--format", "mp4", "--resolution", "360p")
        assert {farm.show(i).status for i in short_ids} == {"queued"}
        running_at_stop = {i: farm.show(i).progress for i in long_ids}
        assert all(0 < p < 100 for p in running_at_stop.values()), running_at_stop

        private_redis.stop()
        stopped_at = time.monotonic()
        time.sleep(OUTAGE_S)
        assert all(n.proc.poll() is None for n in nodes), "a node exited while Redis was down"
        private_redis.start()
        back_at, back_wall = time.monotonic(), time.time()

        wait_for(
            lambda: {n.name for n in registry.nodes() if n.online} >= set(pids),
            timeout=60,
            what="both nodes to show online again",
        )
        online_after = time.monotonic() - back_at
        all_ids = long_ids + short_ids
        finished = wait_for(
            lambda: ended([farm.show(i).to_json() for i in all_ids]), timeout=240, what="every job to finish"
        )
        done_after = time.monotonic() - back_at
        # The last completion event may trail the row by a moment (the node writes the row first).
        wait_for(
            lambda: {e.job_id for _, e in recorder.events if e.event == "completed"} >= set(all_ids),
            timeout=30,
            what="the listener to get every completion",
        )

    # Every job completed, once, with one output: the running ones were not run again.
    for job in finished:
        assert (job["status"], job["attempts"], job["error"]) == ("completed", 1, None), job
    assert bull_records(private_redis.url, settings.queue, all_ids) == {i: ("completed", 1) for i in all_ids}
    storage = open_storage(settings.effective_storage_url)
    for job in finished:
        assert [o.key for o in storage.list(output_prefix(job["id"]))] == [job["output"]["key"]]

    # The same node processes carry on, listed online.
    assert all(n.proc.poll() is None for n in nodes)
    listed = {n.name: n for n in registry.nodes()}
    assert {name: (listed[name].online, listed[name].pid) for name in pids} == {
        name: (True, pid) for name, pid in pids.items()
    }

    # The listener reconnected by itself and resumed where it stopped: the completions written
    # after the restart reached it, and no event came twice.
    listener = recorder.listener
    assert listener.reconnects >= 1
    stream_ids = [e.stream_id for _, e in recorder.events]
    assert len(stream_ids) == len(set(stream_ids)), "an event was delivered twice"
    completions = Counter(e.job_id for _, e in recorder.events if e.event == "completed")
    assert completions == Counter({i: 1 for i in all_ids})
    after_restart = {e.job_id for t, e in recorder.events if e.event == "completed" and t > back_at}
    assert set(short_ids) <= after_restart

    # The node logs say what happened in a few lines, not a traceback per retry.
    for node in nodes:
        text = node.log.read_text()
        assert "Traceback" not in text, f"{node.name}'s log:\n{text}"
        assert text.count("cannot publish heartbeat") == 1, f"{node.name}'s log:\n{text}"
        assert text.count("heartbeats reach Redis again") == 1, f"{node.name}'s log:\n{text}"

    # Figures for docs/reliability.md (not asserted: the machine is shared).
    bull = bull_finish_times(private_redis.url, settings.queue, long_ids)
    held = [bull[i] - epoch(j["finished_at"]) for j in finished for i in [j["id"]] if i in long_ids]
    first_short = min(epoch(j["started_at"]) for j in finished if j["id"] in short_ids) - back_wall
    print(
        f"\nRedis down {back_at - stopped_at:.1f} s; nodes online again {online_after:.1f} s after it came back; "
        f"first queued job started {first_short:.1f} s after; all done {done_after:.1f} s after; "
        f"long jobs at {sorted(round(p) for p in running_at_stop.values())} % when it stopped; their "
        f"completion reached BullMQ {', '.join(f'{h:.1f}' for h in held)} s after their rows were finished"
    )
    registry_client.close()


def test_a_node_on_the_embedded_redis_reconnects_after_it_is_stopped_and_started(local_farm, settings):
    """The embedded Redis comes back on its port, so a running node (holding its URL) gets back in."""
    node = local_farm(1)[0]
    server = ensure_embedded_redis(settings)
    server.stop()
    wait_for(
        lambda: "cannot publish heartbeat" in node.log.read_text(),
        timeout=30,
        what="the node to notice that Redis is gone",
    )
    restarted = ensure_embedded_redis(settings)
    assert restarted.url == server.url
    registry = NodeRegistry(redis.Redis.from_url(restarted.url, decode_responses=True), settings.queue)
    wait_for(
        lambda: any(n.name == node.name and n.online and n.pid == node.proc.pid for n in registry.nodes()),
        timeout=60,
        what="the node to show online again",
    )
    assert node.proc.poll() is None
    text = wait_for(
        lambda: "heartbeats reach Redis again" in (t := node.log.read_text()) and t,
        timeout=10,
        what="the node to log that it is back",
    )
    assert "Traceback" not in text, text
