"""The job processor under a real BullMQ worker: the machine's Redis (a queue of the test's own),
PostgreSQL, folder storage and real FFmpeg. How runs are numbered after a node died, an output
that fails verification, what a run returns when another run (or a cancel) settled the row first,
and a run whose lock another run holds. What is asserted is what users see: the row, BullMQ's
record, storage, the node's counters.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time

import pytest
from bullmq import Queue

from farm.domain.media import find_ffmpeg
from farm.domain.object_keys import output_prefix
from farm.services.db import repo
from farm_node.metrics import NodeMetrics
from farm_node.processor import JobProcessor
from tests.bull import record_job, take_and_die, worker

pytestmark = pytest.mark.postgres


def processor(settings, db, storage, tmp_path, ffmpeg: str | None = None) -> JobProcessor:
    return JobProcessor(
        node_name="proc-node", db=db, storage=storage, ffmpeg=ffmpeg or find_ffmpeg(), work_dir=tmp_path / "work"
    )


async def enqueue(settings, job_id: str, payload: dict) -> None:
    queue = Queue(settings.queue, {"connection": settings.redis_url})
    try:
        await queue.add(
            "transcode", payload, {"jobId": job_id, "attempts": 3, "backoff": {"type": "fixed", "delay": 100}}
        )
    finally:
        await queue.close()


async def run_until_settled(settings, db, job_id: str, proc: JobProcessor, timeout: float = 60):
    """Our processor on a worker until the row is settled; returns (row, BullMQ state, BullMQ job)."""
    from farm.services.db import repo

    node = worker(settings, proc, maxStalledCount=1)
    task = asyncio.ensure_future(node.run())
    queue = Queue(settings.queue, {"connection": settings.redis_url})
    try:
        deadline = time.monotonic() + timeout
        while (row := repo.get_job(db, job_id)).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, f"the row stayed {row.status}"
            await asyncio.sleep(0.1)
        while (state := await queue.getJobState(job_id)) not in ("completed", "failed"):
            assert time.monotonic() < deadline, f"BullMQ's job stayed {state}"
            await asyncio.sleep(0.1)
        return row, state, await queue.getJob(job_id)
    finally:
        await queue.close()
        await node.close()
        await asyncio.gather(task, return_exceptions=True)


def enqueue_and_settle(settings, db, job_id: str, payload: dict, proc):
    """Enqueue the job and let ``proc`` run it until BullMQ settles it: ``(row, state, bull job)``."""

    async def scenario():
        await enqueue(settings, job_id, payload)
        return await run_until_settled(settings, db, job_id, proc)

    return asyncio.run(scenario())


def test_a_run_after_a_node_died_has_its_own_number_and_key(services, tmp_path, caplog):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    caplog.set_level(logging.INFO, logger="farm_node.processor")

    async def scenario():
        await enqueue(settings, job_id, payload)
        await take_and_die(settings, db, job_id, "dead-node")  # run 1 dies: stalledCounter 1
        return await run_until_settled(settings, db, job_id, processor(settings, db, storage, tmp_path))

    row, state, bull = asyncio.run(scenario())
    assert (row.status, row.attempts, row.node, row.error) == ("completed", 2, "proc-node", None)
    assert (state, bull.attemptsMade, bull.stalledCounter) == ("completed", 1, 1)
    key = row.outputs[0]["key"]
    assert "/attempt-2/" in key, "the run after the death must not reuse the dead run's key"
    assert [o.key for o in storage.list(output_prefix(job_id))] == [key]
    assert f"job {job_id}: run 2 starting (stalled 1 time(s) before)" in caplog.text


def short_ffmpeg(tmp_path) -> str:
    """An FFmpeg that stops writing its output after half a second, as a faulty build or filter would."""
    wrapper = tmp_path / "ffmpeg-short"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# everything but the last argument (the output), then -t 0.5, then the output\n"
        'n=$#; i=0; for arg in "$@"; do i=$((i+1)); '
        'if [ $i -eq $n ]; then out=$arg; else set -- "$@" "$arg"; fi; done\n'
        "shift $n\n"
        f'exec {shlex.quote(find_ffmpeg())} "$@" -t 0.5 "$out"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def test_an_output_that_fails_verification_fails_at_once_with_the_reason(services, tmp_path):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    proc = processor(settings, db, storage, tmp_path, ffmpeg=short_ffmpeg(tmp_path))

    row, state, bull = enqueue_and_settle(settings, db, job_id, payload, proc)
    assert (row.status, row.attempts, row.outputs) == ("failed", 1, [])
    assert row.error.startswith(f"the output of {clip.name} failed verification: lasts 0.5"), row.error
    assert "source lasts 2.00 s" in row.error
    assert "output." not in row.error and str(tmp_path) not in row.error, "no scratch file in the reason"
    assert (state, bull.attemptsMade) == ("failed", 1), "the same FFmpeg on the same input: no retry"
    assert bull.failedReason == row.error
    assert list(storage.list(output_prefix(job_id))) == []
    assert list((tmp_path / "work").iterdir()) == []


# -- whichever run finishes, the row and BullMQ's return value agree ------------------------------


def counted(metrics: NodeMetrics, status: str) -> float:
    return metrics.registry.get_sample_value("workers_jobs_processed_total", {"node": metrics.node, "status": status})


class OvertakingStorage:
    """The real storage, except that just before this run's upload another run settles the row
    (``finish``: completed on other-node with its own output; ``cancel``: the user's cancel), as
    happens when a run loses a race it cannot see."""

    def __init__(self, storage, db, job_id: str, clip, settle: str):
        self.real, self.db, self.job_id, self.clip, self.settle = storage, db, job_id, clip, settle
        self.winner: dict | None = None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def upload_file(self, path, key, **kwargs):
        if self.winner is None and self.settle == "finish":
            self.winner = {
                "name": "theirs",
                "kind": "video",
                "key": f"outputs/{self.job_id}/attempt-2/theirs.mp4",
                "size": self.real.upload_file(self.clip, f"outputs/{self.job_id}/attempt-2/theirs.mp4"),
                "width": 320,
                "height": 240,
                "duration": 2.0,
            }
            repo.mark_active(self.db, self.job_id, "other-node", 2)
            repo.finish_job(self.db, self.job_id, "completed", attempt=2, outputs=[self.winner], node="other-node")
        elif self.settle == "cancel":
            repo.mark_cancelled(self.db, self.job_id, "cancelled by user")
        return self.real.upload_file(path, key, **kwargs)


def test_a_run_that_finishes_second_returns_the_rows_output_and_node(services, tmp_path):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    racing = OvertakingStorage(storage, db, job_id, clip, "finish")
    proc = processor(settings, db, racing, tmp_path)
    proc.metrics = NodeMetrics(proc.node_name)

    row, state, bull = enqueue_and_settle(settings, db, job_id, payload, proc)
    assert (row.status, row.node, row.outputs) == ("completed", "other-node", [racing.winner])
    assert state == "completed"
    assert bull.returnvalue == {
        "outputs": [racing.winner],
        "width": 320,
        "height": 240,
        "duration": 2.0,
        "node": "other-node",
    }, "the queue names the row's output and node"
    assert [o.key for o in storage.list(output_prefix(job_id))] == [racing.winner["key"]], "ours was deleted"
    assert counted(proc.metrics, "success") == 0, "the run that completed the row counts the job, not this one"


def test_a_run_that_finds_the_row_completed_returns_the_rows_output_and_node(services, tmp_path):
    """An earlier run completed the row, then its node died before telling BullMQ."""
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    done = {"name": "earlier", "kind": "video", "key": f"outputs/{job_id}/attempt-1/earlier.mp4", "size": 1}
    repo.mark_active(db, job_id, "dead-node", 1)
    repo.finish_job(db, job_id, "completed", attempt=1, outputs=[done], node="dead-node")
    proc = processor(settings, db, storage, tmp_path)
    proc.metrics = NodeMetrics(proc.node_name)

    row, state, bull = enqueue_and_settle(settings, db, job_id, payload, proc)
    assert (row.status, row.node, row.outputs) == ("completed", "dead-node", [done])
    assert state == "completed"
    assert (bull.returnvalue["outputs"], bull.returnvalue["node"]) == ([done], "dead-node")
    assert "duplicate" not in bull.returnvalue
    assert counted(proc.metrics, "success") == 0


def test_a_run_that_wins_records_its_node_and_output_on_the_row_and_in_the_queue(services, tmp_path, monkeypatch):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    proc = processor(settings, db, storage, tmp_path)
    proc.metrics = NodeMetrics(proc.node_name)

    # Another run marked the row active on its node just before this run finished it (it took the
    # job after a stall): the row must name the node whose output it holds, not the last to start.
    original = repo.finish_job

    def finish_after_a_rival_started(db_, job_id_, status, **kwargs):
        repo.mark_active(db_, job_id_, "rival-node", kwargs["attempt"])
        return original(db_, job_id_, status, **kwargs)

    monkeypatch.setattr(repo, "finish_job", finish_after_a_rival_started)

    row, state, bull = enqueue_and_settle(settings, db, job_id, payload, proc)
    assert (row.status, row.node) == ("completed", "proc-node")
    assert (bull.returnvalue["outputs"], bull.returnvalue["node"]) == (row.outputs, "proc-node")
    assert (bull.returnvalue["width"], bull.returnvalue["height"]) == (row.outputs[0]["width"], 240)
    assert counted(proc.metrics, "success") == 1


def test_a_cancel_recorded_as_the_run_finishes_wins_and_the_output_is_deleted(services, tmp_path):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    proc = processor(settings, db, OvertakingStorage(storage, db, job_id, clip, "cancel"), tmp_path)

    async def scenario():
        await enqueue(settings, job_id, payload)
        node = worker(settings, proc)
        task = asyncio.ensure_future(node.run())
        queue = Queue(settings.queue, {"connection": settings.redis_url})
        try:
            deadline = time.monotonic() + 60
            while (state := await queue.getJobState(job_id)) not in ("completed", "failed"):
                assert time.monotonic() < deadline, f"BullMQ's job stayed {state}"
                await asyncio.sleep(0.1)
            return state, await queue.getJob(job_id)
        finally:
            await queue.close()
            await node.close()
            await asyncio.gather(task, return_exceptions=True)

    state, bull = asyncio.run(scenario())
    row = repo.get_job(db, job_id)
    assert (row.status, row.error, row.outputs) == ("cancelled", "cancelled by user", [])
    assert (state, bull.failedReason) == ("failed", "cancelled by user"), "the queue agrees with the row"
    assert list(storage.list(output_prefix(job_id))) == [], "the run's upload was deleted"


def test_a_run_whose_lock_another_run_holds_leaves_the_row_and_the_queue_to_it(services, tmp_path, caplog):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    proc = processor(settings, db, storage, tmp_path)
    proc.metrics = NodeMetrics(proc.node_name)

    async def another_run_holds_it(job_id_):
        return "the-token-of-another-run"

    proc.lock_holder = another_run_holds_it
    caplog.set_level(logging.INFO, logger="farm_node.processor")

    async def scenario():
        await enqueue(settings, job_id, payload)
        node = worker(settings, proc, lockDuration=30_000)
        task = asyncio.ensure_future(node.run())
        queue = Queue(settings.queue, {"connection": settings.redis_url})
        try:
            deadline = time.monotonic() + 60
            while "lost its lock" not in caplog.text:
                assert time.monotonic() < deadline, "the run did not notice"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            return await queue.getJobState(job_id)
        finally:
            await queue.close()
            await node.close(force=True)
            await asyncio.gather(task, return_exceptions=True)

    state = asyncio.run(scenario())
    row = repo.get_job(db, job_id)
    assert (row.status, row.node, row.attempts, row.error, row.outputs) == ("active", "proc-node", 1, None, []), (
        "the row is the other run's: untouched"
    )
    assert state == "active", "BullMQ's job is the other run's: neither completed nor failed by this one"
    assert list(storage.list(output_prefix(job_id))) == [], "nothing uploaded"
    assert [p for p in (tmp_path / "work").iterdir() if p.name.startswith(job_id)] == [], "its work files are gone"
    assert caplog.text.count(f"job {job_id}: run 1 lost its lock to another run") == 1
    assert [counted(proc.metrics, s) for s in ("success", "failed", "cancelled")] == [0, 0, 0]
