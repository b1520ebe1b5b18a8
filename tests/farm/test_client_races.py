"""Retries that race, at the queue client, against a real Redis (a queue of the test's own).

What a producer sees of BullMQ when two clients act on one job at the same moment: each call
answers, none surfaces BullMQ's own ``TypeError``, and the job ends back in the queue once.
The same races through the CLI and a real node: tests/e2e/test_client_races.py.
"""

import asyncio
import os

from bullmq import UnrecoverableError

from farm.domain.jobspec import OutputConfig
from farm.domain.payload import queue_payload
from farm.services.queue import QueueClient, QueueStateError
from tests import bull


def _payload(job_id):
    return queue_payload(job_id, f"inputs/v-{job_id}/a.mp4", "a.mp4", OutputConfig())


def clients(n: int) -> list[QueueClient]:
    return [QueueClient(os.environ["ENCODEFLOW_REDIS_URL"], os.environ["ENCODEFLOW_QUEUE"]) for _ in range(n)]


async def failed_job(q: QueueClient, job_id: str) -> None:
    await bull.failed_job(q, job_id, _payload(job_id), UnrecoverableError("the encoder caught fire"))


def test_two_retries_at_the_same_moment_put_the_job_back_once(redis_url):
    async def body():
        first, second = clients(2)
        try:
            await failed_job(first, "job-r")
            outcomes = await asyncio.gather(
                first.retry("job-r", _payload("job-r")),
                second.retry("job-r", _payload("job-r")),
                return_exceptions=True,
            )
            job = await first.queue.getJob("job-r")
            return outcomes, await first.state("job-r"), job.attemptsMade
        finally:
            await first.close()
            await second.close()

    outcomes, state, attempts = asyncio.run(body())
    assert sorted(map(str, outcomes)) == ["queued", "retried"], outcomes
    assert (state, attempts) == ("waiting", 0)


def test_the_change_lock_lets_one_client_act_on_a_job_at_a_time(redis_url):
    async def body():
        first, second = clients(2)
        order = []

        async def act(q: QueueClient, name: str, hold: float):
            async with q.changing("job-l"):
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        try:
            await asyncio.gather(act(first, "a", 0.5), act(second, "b", 0))
            async with first.changing("job-l"):  # released by both: free again
                pass
            # A lock still held past the wait: one clear line, not a hang.
            async with first.changing("job-m"):
                try:
                    async with second.changing("job-m", wait=0.3):
                        pass
                except QueueStateError as exc:
                    refused = str(exc)
            return order, refused
        finally:
            await first.close()
            await second.close()

    order, refused = asyncio.run(body())
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    assert refused == "another cancel or retry of job job-m is still under way; try again in a moment"
