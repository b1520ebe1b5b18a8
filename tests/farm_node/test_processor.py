"""The job processor under a real BullMQ worker: the machine's Redis (a queue of the test's own),
PostgreSQL, folder storage and real FFmpeg. How runs are numbered after a node died, and an output
that fails verification. What is asserted is what users see: the row, BullMQ's record, storage.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time

import pytest
from bullmq import Queue

from farm.keys import output_prefix
from farm.media import find_ffmpeg
from farm_node.processor import JobProcessor
from tests.bull import record_job, take_and_die, worker

pytestmark = pytest.mark.postgres


def processor(settings, db, storage, tmp_path, ffmpeg: str | None = None) -> JobProcessor:
    return JobProcessor(node_name="proc-node", db=db, storage=storage, ffmpeg=ffmpeg or find_ffmpeg(),
                        work_dir=tmp_path / "work")


async def enqueue(settings, job_id: str, payload: dict) -> None:
    queue = Queue(settings.queue, {"connection": settings.redis_url})
    try:
        await queue.add("transcode", payload, {"jobId": job_id, "attempts": 3,
                                               "backoff": {"type": "fixed", "delay": 100}})
    finally:
        await queue.close()


async def run_until_settled(settings, db, job_id: str, proc: JobProcessor, timeout: float = 60):
    """Our processor on a worker until the row is settled; returns (row, BullMQ state, BullMQ job)."""
    from farm.db import repo

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
        'n=$#; i=0; for arg in "$@"; do i=$((i+1)); if [ $i -eq $n ]; then out=$arg; else set -- "$@" "$arg"; fi; done\n'
        'shift $n\n'
        f'exec {shlex.quote(find_ffmpeg())} "$@" -t 0.5 "$out"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def test_an_output_that_fails_verification_fails_at_once_with_the_reason(services, tmp_path):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    proc = processor(settings, db, storage, tmp_path, ffmpeg=short_ffmpeg(tmp_path))

    async def scenario():
        await enqueue(settings, job_id, payload)
        return await run_until_settled(settings, db, job_id, proc)

    row, state, bull = asyncio.run(scenario())
    assert (row.status, row.attempts, row.outputs) == ("failed", 1, [])
    assert row.error.startswith(f"the output of {clip.name} failed verification: lasts 0.5"), row.error
    assert "source lasts 2.00 s" in row.error
    assert "output." not in row.error and str(tmp_path) not in row.error, "no scratch file in the reason"
    assert (state, bull.attemptsMade) == ("failed", 1), "the same FFmpeg on the same input: no retry"
    assert bull.failedReason == row.error
    assert list(storage.list(output_prefix(job_id))) == []
    assert list((tmp_path / "work").iterdir()) == []
