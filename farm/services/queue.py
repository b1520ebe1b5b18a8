"""The queue client on BullMQ: enqueue, cancel, retry, counts.

The wire format is the one Node.js BullMQ producers use: a BullMQ job named ``transcode`` on the queue
``ENCODEFLOW_QUEUE`` whose BullMQ id is the EncodeFlow job id, with a self-contained payload (see
docs/queue-protocol.md). Cancelling a running job is cooperative: we set a cancel key and publish on
the cancel channel; the node holding the job kills its FFmpeg and ends the job ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, ConnectionError, TimeoutError

from farm.base.errors import FarmError
from farm.domain.keyspace import Keyspace

T = TypeVar("T")

JOB_NAME = "transcode"
DEFAULT_ATTEMPTS = 3
BACKOFF = {"type": "exponential", "delay": 5_000}
# Finished jobs stay in Redis for a while (the database keeps them for good); failed ones stay
# until retried or cleaned, so that a retry can find them.
REMOVE_ON_COMPLETE = {"age": 24 * 3600, "count": 10_000}
CANCEL_TTL_S = 24 * 3600
STATES = ("waiting", "active", "delayed", "prioritized", "failed", "completed", "paused", "waiting-children")
# The states of a job that no node runs yet: a cancel removes it, a retry has nothing to do.
QUEUED_STATES = ("waiting", "delayed", "prioritized", "paused", "waiting-children")
# A cancel or retry holds its job's change lock this long at most (a cancel waits for its node).
CHANGE_LOCK_S = 30.0
# A retry waits this long for a run that is ending (its cancel or failure just recorded) to let go.
SETTLE_S = 10.0
# Delete the change lock only if it is still ours (it may have run out and been taken).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


# A farm's Redis answers in milliseconds: a command with no answer for this long meets a server that
# hangs or a link that silently drops packets. Without a read timeout such a command waits forever.
REDIS_CONNECT_TIMEOUT_S = 5.0
REDIS_READ_TIMEOUT_S = 10.0
# How long a command is retried through an outage, tries and timeouts included: patient clients
# (nodes) ride out a Redis restart; the others (CLI, app actions) answer a user within seconds.
PATIENT_GIVE_UP_S = 300.0
IMPATIENT_GIVE_UP_S = 15.0


class _RetryUnlessRefused(Retry):
    """redis-py's retry, bounded in time, and never for a refused password: redis-py files that
    under ConnectionError, so a node given a wrong password would retry, silent, for minutes.
    A retry cannot fix it. The time bound matters against a server that hangs: every try then
    costs a whole read timeout, and a count of tries alone stretched one command to ten minutes."""

    def __init__(self, backoff: AbstractBackoff, retries: int, give_up_after: float):
        super().__init__(backoff, retries)
        self.give_up_after = give_up_after

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline = time.monotonic() + self.give_up_after

        def retryable(error: Exception) -> bool:
            if isinstance(error, AuthenticationError) or time.monotonic() >= deadline:
                return False
            return is_retryable(error) if is_retryable else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def redis_client(
    url: str, *, patient: bool = False, read_timeout: float = REDIS_READ_TIMEOUT_S, give_up_after: float | None = None
) -> aioredis.Redis:
    """An asyncio Redis client with reconnects and a read timeout on every command.

    ``patient`` clients (nodes) retry for minutes through a Redis restart; the others (CLI, app
    actions) give up after a few seconds so a user gets a clear error instead of a hang;
    ``give_up_after`` sets another bound. Neither retries a refused password. A client that
    issues blocking commands (BZPOPMIN, XREAD BLOCK) needs a ``read_timeout`` above their block time.
    """
    if give_up_after is None:
        give_up_after = PATIENT_GIVE_UP_S if patient else IMPATIENT_GIVE_UP_S
    retry = _RetryUnlessRefused(
        ExponentialBackoff(cap=10 if patient else 1, base=0.2), 30 if patient else 3, give_up_after
    )
    return aioredis.from_url(
        url,
        decode_responses=True,
        retry=retry,
        retry_on_error=[BusyLoadingError, ConnectionError, TimeoutError],
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=read_timeout,
        socket_keepalive=True,
        health_check_interval=15,
    )


class QueueClient:
    """Producer-side operations on one farm queue. Async; close() when done."""

    def __init__(self, redis_url: str, queue: str, *, patient: bool = False):
        self.queue_name = queue
        self.keys = Keyspace(queue)
        self.redis = redis_client(redis_url, patient=patient)
        self.queue = Queue(queue, {"connection": self.redis})

    async def close(self) -> None:
        await self.queue.close()
        await self.redis.aclose()

    async def __aenter__(self) -> QueueClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(
        self, job_id: str, payload: dict[str, Any], *, priority: int = 0, attempts: int = DEFAULT_ATTEMPTS
    ) -> None:
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
        state: str = await self.queue.getJobState(job_id)
        return state

    @contextlib.asynccontextmanager
    async def changing(self, job_id: str, wait: float = CHANGE_LOCK_S) -> AsyncIterator[None]:
        """Hold the job's change lock: one cancel or retry of a job at a time, in every process.

        Two retries at once would both find the job failed, and the second's move would meet a job
        no longer failed (BullMQ's raw ``TypeError``). In turn, each sees what the other did.
        """
        key, token = self.keys.changing(job_id), uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while not await self.redis.set(key, token, nx=True, px=int(CHANGE_LOCK_S * 1000)):
            if time.monotonic() > deadline:
                raise QueueStateError(
                    f"another cancel or retry of job {job_id} is still under way; try again in a moment"
                )
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            await self.redis.eval(_RELEASE, 1, key, token)

    async def cancel(self, job_id: str) -> str:
        """Cancel a job. Returns ``removed`` (it was still waiting, delayed or waiting for children),
        ``requested`` (it is running; its node will stop it) or ``absent`` (not in the queue:
        finished or never queued)."""
        # Set the request first: a node that picks the job up between our remove and publish
        # still sees it when it checks the key on start.
        await self.redis.set(self.keys.cancel(job_id), "1", ex=CANCEL_TTL_S)
        state = await self.state(job_id)
        if state in QUEUED_STATES:
            if await self.queue.remove(job_id):
                return "removed"
            state = await self.state(job_id)  # it became active meanwhile
        if state == "active":
            await self.redis.publish(self.keys.cancel_channel, job_id)
            return "requested"
        return "absent"

    async def retry(
        self, job_id: str, payload: dict[str, Any], *, priority: int = 0, on_ready: Callable[[], Any] | None = None
    ) -> str:
        """Put a failed or cancelled job back in the queue; hold ``changing(job_id)`` around it.

        A job whose run is still ending (a cancel that its node has just recorded) is still active
        in BullMQ for a moment: it is waited for (up to ``SETTLE_S``), not refused. ``on_ready()``
        is called just before the job is back (requeue the row there: a node may take the job at
        once). Returns ``retried``, ``requeued`` (its BullMQ job was gone, so a new one with the
        same id was added) or ``queued`` (it already was: another client put it back).
        """
        await self.redis.delete(self.keys.cancel(job_id))
        state = await self._settled_state(job_id)
        if state == "active":
            raise QueueStateError(
                f"job {job_id} is still held by a node in the queue {SETTLE_S:.0f} s on "
                "(its node may be frozen or cut off); try again in a minute"
            )
        if on_ready is not None:
            on_ready()
        if state in QUEUED_STATES:
            return "queued"
        job = await self.queue.getJob(job_id) if state in ("failed", "completed") else None
        if job is None:
            await self.enqueue(job_id, payload, priority=priority)  # an add whose id exists is ignored
            return "requeued"
        try:
            await job.retry(state, {"resetAttemptsMade": True, "resetAttemptsStarted": True})
        except TypeError:  # BullMQ: no longer in that state; another client moved it first
            if await self.state(job_id) in (*QUEUED_STATES, "active"):
                return "queued"
            raise
        return "retried"

    async def _settled_state(self, job_id: str) -> str:
        """The job's state once it is not active (or still active after ``SETTLE_S``)."""
        deadline = time.monotonic() + SETTLE_S
        while (state := await self.state(job_id)) == "active" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return state

    async def counts(self) -> dict[str, int]:
        counts: dict[str, int] = await self.queue.getJobCounts(
            "waiting", "active", "delayed", "prioritized", "failed", "completed", "paused"
        )
        counts["waiting"] = counts.get("waiting", 0) + counts.pop("prioritized", 0) + counts.pop("paused", 0)
        return counts

    async def promote_due(self) -> int:
        """Move delayed jobs whose time has come (retries after their backoff) back to waiting.

        bullmq 3.4.4's idle worker does not wake for a delayed job whose delay outlasts its idle
        wait, so a retry with a 5 s backoff sat in ``delayed`` forever. Nodes call this every
        second. Scores in the delayed set are ``timestamp * 0x1000 + counter`` (BullMQ's layout).
        """
        now_ms = int(time.time() * 1000)
        due = await self.redis.zrangebyscore(self.keys.delayed, 0, (now_ms + 1) * 0x1000 - 1)
        promoted = 0
        for job_id in due:
            try:
                await self.queue.backend.promote(job_id)
                promoted += 1
            except Exception:  # promoted or taken by another node meanwhile
                pass
        return promoted

    async def is_cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.cancel(job_id)))

    async def lock_holder(self, job_id: str) -> str | None:
        """The token of the run holding the job's BullMQ lock (``bull:<queue>:<id>:lock``); ``""``
        when nobody holds it (it ran out); None when the queue has no such job (Redis lost it)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.job_lock(job_id))
            pipe.exists(self.keys.job(job_id))
            token, exists = await pipe.execute()
        holder: str | None = token if token is not None else ("" if exists else None)
        return holder


class QueueStateError(FarmError, RuntimeError):
    pass
