"""BullMQ for tests, for real: rows recorded as a submit makes them, a worker that takes a job and
dies, waiting for a queue state, and BullMQ's own view of a job."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from bullmq import Queue, Worker

from farm.domain.jobspec import OutputConfig
from farm.domain.object_keys import input_key
from farm.domain.payload import queue_payload
from farm.services.db import repo
from farm.services.queue import QueueClient

CONFIG = OutputConfig(resolution="360p", format="mp4")


def record_job(db, storage, clip, *, upload: bool = True, priority: int = 0) -> tuple[str, dict]:
    """A submitted job's rows (and its input in storage); returns (job id, queue payload)."""
    video_id = str(uuid.uuid4())
    key = input_key(video_id, clip.name)
    if upload:
        storage.upload_file(clip, key)
    repo.create_video(
        db,
        id=video_id,
        name=clip.name,
        key=key,
        size=clip.stat().st_size,
        duration=2.0,
        width=320,
        height=240,
        video_codec="h264",
        container="mov,mp4,m4a,3gp,3g2,mj2",
    )
    job = repo.create_job(db, video_id, CONFIG.to_payload(), priority=priority)
    return job.id, queue_payload(job.id, key, clip.name, CONFIG, video_id=video_id)


def worker(settings, processor, **opts) -> Worker:
    return Worker(
        settings.queue,
        processor,
        {"connection": settings.redis_url, "autorun": False, "lockDuration": 1000, "stalledInterval": 300, **opts},
    )


async def take_and_die(settings, db, job_id: str, node: str) -> None:
    """A node takes the job, marks its row active, and dies: its worker stops without a word."""
    taken = asyncio.Event()

    async def hang(job, token):
        repo.mark_active(db, job.id, node, job.attemptsMade + 1)
        taken.set()
        await asyncio.Event().wait()

    dying = worker(settings, hang)
    task = asyncio.ensure_future(dying.run())
    await asyncio.wait_for(taken.wait(), 20)
    await dying.close(force=True)  # no renewal, no moveToFailed: what SIGKILL leaves behind
    await asyncio.gather(task, return_exceptions=True)


async def wait_state(queue: QueueClient, job_id: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (now := await queue.state(job_id)) != state:
        assert time.monotonic() < deadline, f"job stayed {now}, expected {state}"
        await asyncio.sleep(0.05)


def bull_job(redis_url: str, queue: str, job_id: str) -> tuple[str, object]:
    """BullMQ's state of a job and the job (attemptsMade, attemptsStarted, stalledCounter,
    failedReason, returnvalue, ...); the job is ``None`` if BullMQ has no such job."""

    async def read():
        bull = Queue(queue, {"connection": redis_url})
        try:
            return await bull.getJobState(job_id), await bull.getJob(job_id)
        finally:
            await bull.close()

    return asyncio.run(read())


async def failed_job(q: QueueClient, job_id: str, payload: dict, reason: Exception) -> None:
    """Enqueue ``job_id`` with one attempt and let a worker fail it with ``reason``."""
    await q.enqueue(job_id, payload, attempts=1)
    failed = asyncio.Event()

    async def boom(job, token):
        raise reason

    worker = Worker(q.queue_name, boom, {"connection": os.environ["ENCODEFLOW_REDIS_URL"]})
    worker.on("failed", lambda *a: failed.set())
    await asyncio.wait_for(failed.wait(), 10)
    await worker.close()
