"""The heartbeat against the machine's Redis (and against no Redis at all)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import pytest
import redis
import redis.asyncio as aioredis

from farm.domain.keyspace import Keyspace
from farm.services.registry import NodeRegistry, NodeRegistryWriter
from farm_node.heartbeat import Heartbeat, NodeActivity, NodeInfo

INFO = NodeInfo(concurrency=2, version="0.1.0", ffmpeg_version="7.0.2", encoders=("libx264",), tags=("cpu",))
BUSY = NodeActivity("busy", [{"jobId": "job-1", "progress": 12.5}])


@pytest.fixture
def queue(redis_url) -> str:
    return os.environ["ENCODEFLOW_QUEUE"]


@pytest.fixture
def registry(redis_url, queue):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield NodeRegistry(client, queue)
    client.close()


class CountingWriter(NodeRegistryWriter):
    """A real writer that counts publish attempts and can be told to fail the first few."""

    def __init__(self, *args, fail_first: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.attempts = 0
        self.fail_first = fail_first

    async def publish(self, status, sample=None):
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise redis.ConnectionError("Redis went away (simulated)")
        await super().publish(status, sample)


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_heartbeat_publishes_status_and_samples_then_deregisters(redis_url, queue, registry):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        heartbeat = Heartbeat(NodeRegistryWriter(client, queue, "alpha"), lambda: BUSY, INFO, interval=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        await asyncio.sleep(2.5)
        live = await asyncio.to_thread(registry.node, "alpha")
        samples = await asyncio.to_thread(registry.samples, "alpha")
        stop.set()
        await asyncio.wait_for(task, 2)
        await client.aclose()
        return heartbeat, live, samples

    heartbeat, live, samples = asyncio.run(main())

    assert len(samples) >= 3
    for sample in samples:
        assert 0 <= sample["cpu"] <= 100 and 0 < sample["mem"] < 1
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    # Sampled every interval, published in batches of publish_every: no sample is skipped and
    # the newest one is at most one batch behind.
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(samples)]
    assert all(0.3 < gap < 0.8 for gap in gaps), gaps
    assert 0 <= heartbeat.last_sample["t"] - samples[-1]["t"] <= heartbeat.interval * heartbeat.publish_every + 0.1
    assert (live.status, live.running, live.concurrency, live.encoders) == ("busy", BUSY.running, 2, ["libx264"])
    assert live.pid == os.getpid() and live.rss > 0 and live.started_at <= live.last_seen
    assert registry.node("alpha").status == "offline"  # a clean stop deregisters at once


def test_heartbeat_survives_unreachable_redis_without_spinning(queue, caplog):
    samples = []

    async def main():
        client = aioredis.Redis.from_url("redis://127.0.0.1:1")  # nothing listens there
        writer = CountingWriter(client, queue, "alpha")
        heartbeat = Heartbeat(writer, lambda: BUSY, INFO, interval=0.1, on_sample=samples.append)
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        await asyncio.sleep(2.5)
        stop.set()
        stopping = time.monotonic()
        await asyncio.wait_for(task, 2)  # returns, does not raise
        await client.aclose()
        return writer, heartbeat, time.monotonic() - stopping

    with caplog.at_level(logging.INFO, logger="farm_node.heartbeat"):
        writer, heartbeat, stop_took = asyncio.run(main())

    # 0.1 s beats would be ~23 attempts; backing off (0.2, 0.4, 0.8, 1.6 s) makes it about 4.
    assert 2 <= writer.attempts <= 6
    assert heartbeat.failures == writer.attempts and heartbeat.outage_seconds > 2
    assert len(samples) >= 15  # still sampling for the exporter while Redis is gone
    [logged] = caplog.records  # one line for the outage, not one a tick
    assert "node alpha: cannot publish heartbeat (ConnectionError" in logged.getMessage()
    assert heartbeat.health(unhealthy_after=1.0)["status"] == "unhealthy"
    assert heartbeat.health(unhealthy_after=60.0)["status"] == "busy"
    assert stop_took < 0.5


def test_heartbeat_recovers_after_an_outage(redis_url, queue, registry, caplog):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        writer = CountingWriter(client, queue, "alpha", fail_first=2)
        heartbeat = Heartbeat(writer, lambda: BUSY, INFO, interval=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        back = await wait_until(lambda: heartbeat.published > 0, 3)
        live = await asyncio.to_thread(registry.node, "alpha")
        stop.set()
        await task
        await client.aclose()
        return back, heartbeat, live

    with caplog.at_level(logging.INFO, logger="farm_node.heartbeat"):
        back, heartbeat, live = asyncio.run(main())

    assert back and live.status == "busy"
    assert heartbeat.failures == 0 and heartbeat.outage_since is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot publish heartbeat" in m for m in messages) == 1
    assert sum("heartbeats reach Redis again" in m for m in messages) == 1


def test_heartbeat_stops_promptly(redis_url, queue):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        heartbeat = Heartbeat(NodeRegistryWriter(client, queue, "alpha"), NodeActivity, INFO, interval=5)
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        await asyncio.sleep(0.5)  # the first beat is done, the loop sleeps for 5 s
        stop.set()
        started = time.monotonic()
        await task
        took = time.monotonic() - started
        await client.aclose()
        return heartbeat, took

    heartbeat, took = asyncio.run(main())
    assert heartbeat.published == 1
    assert took < 0.5


def test_remote_control_reaches_the_node_through_pubsub(redis_url, queue, registry):
    """With a 5 s beat, only the pub/sub listener can deliver the change within a second."""
    states = []

    async def main():
        client = aioredis.Redis.from_url(redis_url)
        heartbeat = Heartbeat(
            NodeRegistryWriter(client, queue, "alpha"), NodeActivity, INFO, interval=5, on_desired_state=record
        )
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        channel = Keyspace(queue).control_channel
        subscribed = await wait_until(lambda: states == ["run"], 2) and await wait_until(
            lambda: registry.redis.pubsub_numsub(channel)[0][1] == 1, 2
        )
        await asyncio.to_thread(registry.set_desired_state, "alpha", "drain")
        delivered = await wait_until(lambda: states[-1] == "drain", 1)
        stop.set()
        await task
        await client.aclose()
        return subscribed, delivered

    async def record(state):  # a coroutine callback is awaited
        states.append(state)

    subscribed, delivered = asyncio.run(main())
    assert subscribed and delivered
    assert states == ["run", "drain"]


def test_remote_control_is_read_on_every_beat_without_listener(redis_url, queue, registry):
    states = []

    async def main():
        client = aioredis.Redis.from_url(redis_url)
        heartbeat = Heartbeat(
            NodeRegistryWriter(client, queue, "alpha"),
            NodeActivity,
            INFO,
            interval=0.2,
            on_desired_state=states.append,
            listen=False,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        await wait_until(lambda: heartbeat.published > 0, 2)
        await asyncio.to_thread(registry.set_desired_state, "alpha", "pause")
        delivered = await wait_until(lambda: heartbeat.desired_state == "pause", 1)
        stop.set()
        await task
        await client.aclose()
        return delivered

    assert asyncio.run(main())
    assert states == ["run", "pause"]


def test_a_failing_activity_callable_does_not_stop_the_beat(redis_url, queue, registry, caplog):
    calls = []

    def activity():
        calls.append(1)
        raise RuntimeError("processor bug")

    async def main():
        client = aioredis.Redis.from_url(redis_url)
        heartbeat = Heartbeat(NodeRegistryWriter(client, queue, "alpha"), activity, INFO, interval=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(heartbeat.run(stop))
        await wait_until(lambda: heartbeat.published >= 3, 3)
        stop.set()
        await task
        await client.aclose()
        return heartbeat

    with caplog.at_level(logging.WARNING, logger="farm_node.heartbeat"):
        heartbeat = asyncio.run(main())
    assert heartbeat.published >= 3 and len(calls) >= 3
    assert sum("activity failed" in r.getMessage() for r in caplog.records) == 1
