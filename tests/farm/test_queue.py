"""The queue client against a real Redis: what a producer sees of BullMQ."""

import asyncio
import os

from farm.domain.jobspec import OutputConfig
from farm.domain.payload import queue_payload
from farm.services.queue import JOB_NAME, QueueClient
from tests.bull import failed_job


def _payload(job_id):
    return queue_payload(job_id, f"inputs/v-{job_id}/a.mp4", "a.mp4", OutputConfig())


def run(coro_fn):
    async def main():
        async with QueueClient(os.environ["ENCODEFLOW_REDIS_URL"], os.environ["ENCODEFLOW_QUEUE"]) as client:
            return await coro_fn(client)

    return asyncio.run(main())


def test_enqueue_uses_the_contracts_wire_format(redis_url):
    async def body(q: QueueClient):
        await q.enqueue("job-a", _payload("job-a"), priority=5)
        job = await q.queue.getJob("job-a")
        return job, await q.state("job-a"), await q.counts()

    job, state, counts = run(body)
    assert job.name == JOB_NAME and job.id == "job-a"
    assert job.data["outputConfig"] == {"resolution": "720p", "format": "mp4", "includeAudio": True}
    assert job.opts["attempts"] == 3 and job.opts["backoff"]["type"] == "exponential"
    assert job.opts["priority"] == 5
    assert state == "prioritized"
    assert counts["waiting"] == 1 and counts["active"] == 0


def test_priorities_order_the_queue(redis_url):
    async def body(q: QueueClient):
        await q.enqueue("low", _payload("low"), priority=10)
        await q.enqueue("high", _payload("high"), priority=1)
        return [j.id for j in await q.queue.getJobs(["prioritized"], asc=True)]

    assert run(body) == ["high", "low"]


def test_cancel_a_waiting_job_removes_it(redis_url):
    async def body(q: QueueClient):
        await q.enqueue("job-w", _payload("job-w"))
        outcome = await q.cancel("job-w")
        return outcome, await q.queue.getJob("job-w"), await q.is_cancel_requested("job-w")

    outcome, job, requested = run(body)
    assert outcome == "removed"
    assert job is None
    assert requested, "a node that raced us to the job must still see the request"


def test_cancel_an_active_job_asks_its_node(redis_url):
    async def body(q: QueueClient):
        await q.enqueue("job-r", _payload("job-r"))
        pubsub = q.redis.pubsub()
        await pubsub.subscribe(q.keys.cancel_channel)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        # Take the job as a worker would, without processing it.
        from bullmq import Worker

        taken = asyncio.Event()

        async def hold(job, token):
            taken.set()
            await asyncio.sleep(3)

        worker = Worker(q.queue_name, hold, {"connection": os.environ["ENCODEFLOW_REDIS_URL"]})
        await asyncio.wait_for(taken.wait(), 10)
        outcome = await q.cancel("job-r")
        message = await pubsub.get_message(timeout=2)
        await pubsub.aclose()
        await worker.close(force=True)
        return outcome, message

    outcome, message = run(body)
    assert outcome == "requested"
    assert message["data"] == "job-r"


def test_cancel_of_an_unknown_job_is_absent(redis_url):
    assert run(lambda q: q.cancel("never-queued")) == "absent"


def test_retry_requeues_failed_and_removed_jobs(redis_url):
    async def body(q: QueueClient):
        # A job removed while waiting (cancelled) comes back as a new BullMQ job with the same id.
        await q.enqueue("job-x", _payload("job-x"))
        await q.cancel("job-x")
        first = await q.retry("job-x", _payload("job-x"))
        state_after_first = await q.state("job-x")
        cancel_cleared = not await q.is_cancel_requested("job-x")
        second = await q.retry("job-x", _payload("job-x"))  # already back: nothing to do, no error
        return first, second, state_after_first, cancel_cleared

    first, second, state, cleared = run(body)
    assert first == "requeued" and second == "queued" and state == "waiting" and cleared


def test_retry_of_a_failed_job_resets_its_attempts(redis_url):
    async def body(q: QueueClient):
        await failed_job(q, "job-f", _payload("job-f"), RuntimeError("disk on fire"))
        before = await q.state("job-f")
        outcome = await q.retry("job-f", _payload("job-f"))
        job = await q.queue.getJob("job-f")
        return before, outcome, await q.state("job-f"), job.attemptsMade

    before, outcome, after, attempts = run(body)
    assert (before, outcome, after, attempts) == ("failed", "retried", "waiting", 0)


def test_a_retry_after_its_backoff_is_put_back_in_the_queue(redis_url):
    """bullmq's idle worker alone never woke for a retry whose backoff outlasted its idle wait."""

    async def body(q: QueueClient):
        import time

        from bullmq import Worker

        runs = []

        async def flaky(job, token):
            runs.append(time.monotonic())
            if len(runs) == 1:
                raise RuntimeError("storage timed out")
            return "ok"

        await q.enqueue("job-b", _payload("job-b"))
        worker = Worker(q.queue_name, flaky, {"connection": os.environ["ENCODEFLOW_REDIS_URL"], "drainDelay": 2})
        deadline = time.monotonic() + 20
        while len(runs) < 2 and time.monotonic() < deadline:
            await q.promote_due()
            await asyncio.sleep(0.5)
        await worker.close()
        return runs, await q.state("job-b")

    runs, state = run(body)
    assert len(runs) == 2, "the retry never ran"
    assert 4.5 <= runs[1] - runs[0] <= 12, "it ran after its 5 s backoff, not before"
    assert state == "completed"


def test_lock_holder_names_the_runs_token_nobody_or_no_such_job(redis_url):
    async def body(q: QueueClient):
        from bullmq import Worker

        await q.enqueue("job-k", _payload("job-k"))
        held = asyncio.Queue()

        async def hold(job, token):
            await held.put(token)
            await asyncio.sleep(30)

        worker = Worker(q.queue_name, hold, {"connection": os.environ["ENCODEFLOW_REDIS_URL"], "lockDuration": 1000})
        token = await asyncio.wait_for(held.get(), 10)
        holding = await q.lock_holder("job-k")
        await worker.close(force=True)  # no renewal from now on: the lock runs out
        await asyncio.sleep(1.5)
        ran_out = await q.lock_holder("job-k")
        await q.redis.delete(f"bull:{q.queue_name}:job-k")  # what a Redis that lost its data leaves
        return token, holding, ran_out, await q.lock_holder("job-k")

    token, holding, ran_out, gone = run(body)
    assert (holding, ran_out, gone) == (token, "", None)
