"""The queue client on BullMQ: enqueue, cancel, retry, counts.

The wire format is the Node system's: a BullMQ job named ``transcode`` on the queue
``ENCODEFLOW_QUEUE`` whose BullMQ id is the EncodeFlow job id, with a self-contained payload (see
docs/queue-protocol.md). Cancelling a running job is cooperative: we set a cancel key and publish on
the cancel channel; the node holding the job kills its FFmpeg and ends the job ``cancelled``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, ConnectionError, TimeoutError

JOB_NAME = "transcode"
DEFAULT_ATTEMPTS = 3
BACKOFF = {"type": "exponential", "delay": 5_000}
# Finished jobs stay in Redis for a while (the database keeps them for good); failed ones stay
# until retried or cleaned, so that a retry can find them.
REMOVE_ON_COMPLETE = {"age": 24 * 3600, "count": 10_000}
CANCEL_TTL_S = 24 * 3600
STATES = ("waiting", "active", "delayed", "prioritized", "failed", "completed", "paused", "waiting-children")


class _RetryUnlessRefused(Retry):
    """redis-py's retry, except for a refused password: redis-py files that under ConnectionError,
    so a node given a wrong password would retry, silent, for minutes. A retry cannot fix it."""

    async def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError):
                return False
            return is_retryable(error) if is_retryable else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def redis_client(url: str, *, patient: bool = False) -> aioredis.Redis:
    """An asyncio Redis client with reconnects.

    ``patient`` clients (nodes) retry for minutes through a Redis restart; the others (CLI, app
    actions) give up after a few seconds so a user gets a clear error instead of a hang. Neither
    retries a refused password.
    """
    retry = _RetryUnlessRefused(ExponentialBackoff(cap=10 if patient else 1, base=0.2), 30 if patient else 3)
    return aioredis.from_url(
        url,
        decode_responses=True,
        retry=retry,
        retry_on_error=[BusyLoadingError, ConnectionError, TimeoutError],
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=15,
    )


def keys_prefix(queue: str) -> str:
    """Prefix of EncodeFlow's own keys (node registry, cancel requests) for one queue."""
    return f"encodeflow:{queue}:"


def cancel_key(queue: str, job_id: str) -> str:
    return f"{keys_prefix(queue)}cancel:{job_id}"


def cancel_channel(queue: str) -> str:
    return f"{keys_prefix(queue)}cancel"


class QueueClient:
    """Producer-side operations on one farm queue. Async; close() when done."""

    def __init__(self, redis_url: str, queue: str, *, patient: bool = False):
        self.queue_name = queue
        self.redis = redis_client(redis_url, patient=patient)
        self.queue = Queue(queue, {"connection": self.redis})

    async def close(self) -> None:
        await self.queue.close()
        await self.redis.aclose()

    async def __aenter__(self) -> "QueueClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def enqueue(self, job_id: str, payload: dict[str, Any], *, priority: int = 0,
                      attempts: int = DEFAULT_ATTEMPTS) -> None:
        opts: dict[str, Any] = {
            "jobId": job_id,
            "attempts": attempts,
            "backoff": BACKOFF,
            "removeOnComplete": REMOVE_ON_COMPLETE,
        }
        if priority:
            opts["priority"] = priority
        await self.queue.add(JOB_NAME, payload, opts)

    async def state(self, job_id: str) -> str:
        """BullMQ's state for the job: waiting, active, delayed, failed, completed, … or unknown."""
        return await self.queue.getJobState(job_id)

    async def cancel(self, job_id: str) -> str:
        """Cancel a job. Returns ``removed`` (it was still waiting), ``requested`` (it is running;
        its node will stop it) or ``absent`` (not in the queue: finished or never queued)."""
        # Set the request first: a node that picks the job up between our remove and publish
        # still sees it when it checks the key on start.
        await self.redis.set(cancel_key(self.queue_name, job_id), "1", ex=CANCEL_TTL_S)
        state = await self.state(job_id)
        if state in ("waiting", "delayed", "prioritized", "paused", "waiting-children"):
            if await self.queue.remove(job_id):
                return "removed"
            state = await self.state(job_id)  # it became active meanwhile
        if state == "active":
            await self.redis.publish(cancel_channel(self.queue_name), job_id)
            return "requested"
        return "absent"

    async def retry(self, job_id: str, payload: dict[str, Any], *, priority: int = 0) -> str:
        """Put a failed or cancelled job back in the queue. Returns ``retried`` or ``requeued``
        (its BullMQ job was gone, so a new one with the same id was added)."""
        await self.redis.delete(cancel_key(self.queue_name, job_id))
        job = await self.queue.getJob(job_id)
        if job is not None:
            state = await self.state(job_id)
            if state in ("failed", "completed"):
                await job.retry(state, {"resetAttemptsMade": True, "resetAttemptsStarted": True})
                return "retried"
            if state in ("waiting", "active", "delayed", "prioritized"):
                raise QueueStateError(f"job {job_id} is already {state} in the queue")
            await job.remove()
        await self.enqueue(job_id, payload, priority=priority)
        return "requeued"

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts("waiting", "active", "delayed", "prioritized", "failed", "completed", "paused")
        counts["waiting"] = counts.get("waiting", 0) + counts.pop("prioritized", 0) + counts.pop("paused", 0)
        return counts

    async def promote_due(self) -> int:
        """Move delayed jobs whose time has come (retries after their backoff) back to waiting.

        bullmq 3.4.4's idle worker does not wake for a delayed job whose delay outlasts its idle
        wait, so a retry with a 5 s backoff sat in ``delayed`` forever. Nodes call this every
        second. Scores in the delayed set are ``timestamp * 0x1000 + counter`` (BullMQ's layout).
        """
        now_ms = int(time.time() * 1000)
        due = await self.redis.zrangebyscore(f"bull:{self.queue_name}:delayed", 0, (now_ms + 1) * 0x1000 - 1)
        promoted = 0
        for job_id in due:
            try:
                await self.queue.backend.promote(job_id)
                promoted += 1
            except Exception:  # promoted or taken by another node meanwhile
                pass
        return promoted

    async def is_cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.exists(cancel_key(self.queue_name, job_id)))


class QueueStateError(RuntimeError):
    pass


def run_sync(coro):
    """Run one coroutine to completion from synchronous code (CLI, app background tasks)."""
    return asyncio.run(coro)
