"""The reconciler against the real thing: the machine's Redis (a queue of the test's own),
PostgreSQL and folder storage. Jobs are put into each state for real, with BullMQ's own workers
and scripts: a worker that takes a job and is force-closed (its node "died"), BullMQ's stalled
check moving it back to wait or, past ``maxStalledCount``, failing it; the queue's keys deleted
as a Redis that lost its data would. What is asserted is the job's row as users see it.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from farm.base.settings import Settings
from farm.domain.nodes import NodeStatus
from farm.domain.object_keys import output_key, output_prefix
from farm.services.db import repo
from farm.services.queue import QueueClient
from farm.services.reconciler import Reconciler
from farm.services.registry import NodeRegistryWriter
from farm_node.reconcile_loop import reconcile_forever
from tests.bull import record_job, take_and_die, wait_state, worker

pytestmark = pytest.mark.postgres


def run(coro):
    return asyncio.run(coro)


# -- BullMQ failed it, no code of ours ran ------------------------------------------------------


def test_a_job_that_stalled_too_often_fails_with_a_reason_users_understand(services):
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            await queue.enqueue(job_id, payload)
            await take_and_die(settings, db, job_id, "dead-node")

            async def must_not_run(job, token):
                raise AssertionError("a job past its stall limit must not run again")

            # The stalled check moves the job back with a deferred failure (maxStalledCount 0), and
            # the next worker to take it fails it at once, in BullMQ's code, not ours.
            survivor = worker(settings, must_not_run, maxStalledCount=0)
            task = asyncio.ensure_future(survivor.run())
            try:
                await wait_state(queue, job_id, "failed")
            finally:
                await survivor.close()
                await asyncio.gather(task, return_exceptions=True)
            assert repo.get_job(db, job_id).status == "active", "the row still says active"
            return await Reconciler(db, queue, storage, grace_s=0).run_once()

    actions = run(scenario())
    job = repo.get_job(db, job_id)
    assert (job.status, job.error, job.attempts) == (
        "failed",
        "the node running it stopped responding once; last node dead-node",
        1,
    )
    assert job.finished_at is not None
    assert [(a.job_id, a.action) for a in actions] == [(job_id, "failed")]


def test_settle_failed_settles_one_job_at_once_and_leaves_others(services):
    """What a node does when its worker fails a stalled job: no grace, that job only."""
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)
    waiting_id, waiting_payload = record_job(db, storage, clip)

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            await queue.enqueue(job_id, payload)
            await take_and_die(settings, db, job_id, "dead-node")
            survivor = worker(settings, lambda job, token: asyncio.sleep(0), maxStalledCount=0)
            task = asyncio.ensure_future(survivor.run())
            try:
                await wait_state(queue, job_id, "failed")
            finally:
                await survivor.close()
                await asyncio.gather(task, return_exceptions=True)
            await queue.enqueue(waiting_id, waiting_payload)
            reconciler = Reconciler(db, queue, storage, grace_s=3600)
            return (
                await reconciler.run_once(),
                await reconciler.settle_failed(job_id),
                await reconciler.settle_failed(waiting_id),
            )

    periodic, settled, untouched = run(scenario())
    assert periodic == [], "the periodic pass waits out its grace"
    assert settled is not None and settled.action == "failed"
    assert repo.get_job(db, job_id).status == "failed"
    assert untouched is None and repo.get_job(db, waiting_id).status == "queued"


def test_a_failed_queue_job_keeps_its_own_reason(services):
    """A node whose database write failed: BullMQ has the reason, the row gets it."""
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip)

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            await queue.enqueue(job_id, payload, attempts=1)

            async def fails(job, token):
                repo.mark_active(db, job.id, "flaky-node", 1)
                raise RuntimeError("FFmpeg failed: Invalid data found when processing input")

            node = worker(settings, fails)
            task = asyncio.ensure_future(node.run())
            try:
                await wait_state(queue, job_id, "failed")
            finally:
                await node.close()
                await asyncio.gather(task, return_exceptions=True)
            return await Reconciler(db, queue, storage, grace_s=0).run_once()

    run(scenario())
    job = repo.get_job(db, job_id)
    assert (job.status, job.error, job.attempts) == (
        "failed",
        "FFmpeg failed: Invalid data found when processing input",
        1,
    )


# -- the queue lost the job -----------------------------------------------------------------------


def delete_queue_keys(settings) -> int:
    """What a Redis that restarted without its data leaves of this queue: nothing."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"bull:{settings.queue}:*", count=1000))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


def test_jobs_lost_from_the_queue_are_queued_again_if_their_input_is_there(services, tmp_path):
    settings, db, storage, clip = services
    queued_id, queued_payload = record_job(db, storage, clip, priority=3)
    active_id, active_payload = record_job(db, storage, clip)
    orphan_id, orphan_payload = record_job(db, storage, clip, upload=False)  # input gone too

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            for job_id, payload in (
                (queued_id, queued_payload),
                (active_id, active_payload),
                (orphan_id, orphan_payload),
            ):
                await queue.enqueue(job_id, payload, priority=3 if job_id == queued_id else 0)
            repo.mark_active(db, active_id, "node-a", 1)
            assert delete_queue_keys(settings) > 0
            actions = await Reconciler(db, queue, storage, grace_s=0).run_once()
            states = {job_id: await queue.state(job_id) for job_id in (queued_id, active_id, orphan_id)}
            again = await queue.queue.getJob(queued_id)
            return actions, states, again

    actions, states, again = run(scenario())
    assert sorted((a.job_id, a.action) for a in actions) == sorted(
        [(queued_id, "requeued"), (active_id, "requeued"), (orphan_id, "failed")]
    )
    assert states == {queued_id: "prioritized", active_id: "waiting", orphan_id: "unknown"}
    assert again.data == queued_payload, "the payload is rebuilt as the producer made it"
    assert again.opts["priority"] == 3
    for job_id in (queued_id, active_id):
        job = repo.get_job(db, job_id)
        assert (job.status, job.node, job.error) == (
            "queued",
            None,
            "re-queued: the job was lost from the queue (Redis data loss?)",
        )
    job = repo.get_job(db, orphan_id)
    assert (job.status, job.error) == (
        "failed",
        "lost from the queue (Redis data loss?), and its input is no longer in storage",
    )


# -- the job is back in the queue, its node is gone ------------------------------------------------


def test_an_active_row_whose_node_died_shows_queued_while_the_job_waits(services):
    settings, db, storage, clip = services
    dead_id, dead_payload = record_job(db, storage, clip)
    live_id, live_payload = record_job(db, storage, clip)

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            writer = NodeRegistryWriter(queue.redis, settings.queue, "live-node")
            await queue.enqueue(dead_id, dead_payload)
            await take_and_die(settings, db, dead_id, "dead-node")
            await queue.enqueue(live_id, live_payload)
            await take_and_die(settings, db, live_id, "live-node")
            # The stalled check alone (no worker takes jobs): both go back to wait once their
            # locks run out. One row's node is gone; the other's is online and says it runs it.
            checker = worker(settings, None, maxStalledCount=5)  # checks only, takes nothing
            while {await queue.state(dead_id), await queue.state(live_id)} != {"waiting"}:
                await checker.runStalledJobsCheck()
                await asyncio.sleep(0.35)
            await checker.close()
            await writer.publish(NodeStatus(name="live-node", status="busy", running=[{"jobId": live_id}]))
            return await Reconciler(db, queue, storage, grace_s=0).run_once()

    actions = run(scenario())
    assert [(a.job_id, a.action) for a in actions] == [(dead_id, "queued")]
    job = repo.get_job(db, dead_id)
    assert (job.status, job.node, job.error) == (
        "queued",
        None,
        "node dead-node stopped responding; waiting for another node",
    )
    assert repo.get_job(db, live_id).status == "active", "a node that says it runs the job keeps it"


# -- what the reconciler must never touch ------------------------------------------------------------


def test_settled_and_fresh_rows_are_left_alone(services):
    settings, db, storage, clip = services
    completed_id, _ = record_job(db, storage, clip)
    cancelled_id, _ = record_job(db, storage, clip)
    fresh_id, _ = record_job(db, storage, clip)  # just submitted: in the database, not yet queued
    repo.mark_active(db, completed_id, "node-a", 1)
    repo.finish_job(db, completed_id, "completed", attempt=1, outputs=[{"key": "k", "size": 1}])
    repo.mark_cancelled(db, cancelled_id, "cancelled by user")
    before = {j: repo.to_job(repo.get_job(db, j)).to_json() for j in (completed_id, cancelled_id, fresh_id)}

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            # None of them is in the queue at all; the fresh one is younger than the grace.
            return await Reconciler(db, queue, storage, grace_s=30).run_once()

    assert run(scenario()) == []
    assert {j: repo.to_job(repo.get_job(db, j)).to_json() for j in before} == before


def test_a_row_changed_while_the_pass_looked_is_not_overwritten(services, monkeypatch):
    """A retry or a new run that moves the row between the read and the write wins."""
    settings, db, storage, clip = services
    job_id, payload = record_job(db, storage, clip, upload=False)
    repo.mark_active(db, job_id, "node-a", 1)  # and the queue has no trace of it
    real_exists = storage.exists

    def exists_while_a_node_takes_the_job(key):
        repo.mark_active(db, job_id, "node-b", 2)  # a new run: same status, a later change
        return real_exists(key)

    monkeypatch.setattr(storage, "exists", exists_while_a_node_takes_the_job)

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            return await Reconciler(db, queue, storage, grace_s=0).run_once()

    assert run(scenario()) == []
    job = repo.get_job(db, job_id)
    assert (job.status, job.node, job.error) == ("active", "node-b", None)


# -- outputs of runs that lost -----------------------------------------------------------------------


def test_outputs_of_runs_that_lost_are_swept_after_the_job_completed(services, tmp_path):
    settings, db, storage, clip = services
    rerun_id, _ = record_job(db, storage, clip)
    once_id, _ = record_job(db, storage, clip)
    keys = {n: output_key(rerun_id, n, "clip-360p-mp4.mp4") for n in (1, 2)}
    for key in (*keys.values(), output_key(once_id, 1, "clip-360p-mp4.mp4")):
        storage.upload_file(clip, key)
    repo.mark_active(db, rerun_id, "node-b", 2)
    repo.finish_job(db, rerun_id, "completed", attempt=2, outputs=[{"key": keys[2], "size": 1}])
    repo.mark_active(db, once_id, "node-a", 1)
    repo.finish_job(
        db, once_id, "completed", attempt=1, outputs=[{"key": output_key(once_id, 1, "clip-360p-mp4.mp4"), "size": 1}]
    )

    async def scenario():
        async with QueueClient(settings.redis_url, settings.queue) as queue:
            return await Reconciler(db, queue, storage, grace_s=0).run_once()

    actions = run(scenario())
    assert [(a.job_id, a.action) for a in actions] == [(rerun_id, "swept")]
    assert [o.key for o in storage.list(output_prefix(rerun_id))] == [keys[2]]
    assert len(list(storage.list(output_prefix(once_id)))) == 1


# -- the periodic loop -------------------------------------------------------------------------------


class CountingReconciler:
    """Stands in for the database work: the test is about who runs a pass, and when."""

    def __init__(self, passes: list, name: str):
        self.passes, self.name = passes, name

    async def run_once(self):
        self.passes.append((time.monotonic(), self.name))
        return []


def test_one_pass_per_interval_on_the_whole_farm(redis_url):
    from farm.services.queue import redis_client

    settings = Settings.load()
    interval = 0.5
    passes: list = []

    async def scenario():
        redis = redis_client(redis_url)
        stopping = asyncio.Event()
        loops = [
            asyncio.ensure_future(
                reconcile_forever(CountingReconciler(passes, n), redis, settings.queue, n, stopping, interval)
            )
            for n in ("a", "b", "c")
        ]
        await asyncio.sleep(4.0)
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*loops), 5)
        await redis.aclose()

    run(scenario())
    times = sorted(t for t, _ in passes)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Three nodes each trying every 0.4-0.6 s would make ~20 passes; the lock lets one through
    # per ~0.36 s at most.
    assert 4 <= len(times) <= 12, times
    assert min(gaps) >= 0.3, gaps
