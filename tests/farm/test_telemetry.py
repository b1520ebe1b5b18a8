"""The node registry against the machine's Redis: what nodes write is what the CLI and app read."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis
import redis.asyncio as aioredis

from farm.domain.keyspace import Keyspace
from farm.domain.nodes import NodeStatus, UnknownNodeError
from farm.services.registry import (
    NodeRegistry,
    NodeRegistryWriter,
    control_listener,
)


@pytest.fixture
def queue(redis_url) -> str:
    return os.environ["ENCODEFLOW_QUEUE"]


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def registry(client, queue) -> NodeRegistry:
    return NodeRegistry(client, queue)


def a_status(name: str = "alpha", **changes) -> NodeStatus:
    fields = dict(
        name=name,
        host="render-01",
        pid=4242,
        status="busy",
        cpu=37.5,
        memory=0.42,
        rss=123_456_789,
        concurrency=2,
        running=[{"jobId": "job-1", "progress": 40, "name": "clip.mov"}],
        ffmpeg_version="7.0.2",
        encoders=["libx264", "libvpx-vp9"],
        tags=["gpu"],
        version="0.1.0",
        started_at=time.time() - 60,
        last_seen=time.time(),
        metrics_url="http://render-01:9100/metrics",
    )
    fields.update(changes)
    return NodeStatus(**fields)


def with_writer(redis_url: str, queue: str, name: str, action, **options):
    """Run ``await action(writer)`` with a writer on a fresh asyncio client."""

    async def main():
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await action(NodeRegistryWriter(client, queue, name, **options))
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("decode", [True, False], ids=["str-client", "bytes-client"])
def test_published_node_is_listed_with_its_fields(redis_url, queue, client, decode):
    status = a_status()
    with_writer(redis_url, queue, "alpha", lambda w: w.publish(status, {"t": 1.0, "cpu": 37.5, "mem": 0.42}))

    with redis.Redis.from_url(redis_url, decode_responses=decode) as reader_client:
        reader = NodeRegistry(reader_client, queue)
        assert reader.nodes() == [status]
        assert reader.node("alpha") == status
        assert reader.node("alpha").online
        assert reader.node("never-seen") is None
        assert reader.samples("alpha") == [{"t": 1.0, "cpu": 37.5, "mem": 0.42}]
    assert sorted(client.keys(f"*{queue}*")) == [
        f"encodeflow:{queue}:node:alpha",
        f"encodeflow:{queue}:node:alpha:samples",
        f"encodeflow:{queue}:nodes",
    ]


def test_samples_are_capped_at_600_and_oldest_first(redis_url, queue, registry):
    async def publish_many(writer):
        for i in range(610):
            await writer.publish(a_status(), {"t": 1000.0 + i, "cpu": float(i % 100), "mem": 0.5})

    with_writer(redis_url, queue, "alpha", publish_many)

    samples = registry.samples("alpha")
    assert len(samples) == 600
    assert [s["t"] for s in samples] == [1000.0 + i for i in range(10, 610)]
    assert [s["t"] for s in registry.samples("alpha", since=1605.0)] == [1606.0, 1607.0, 1608.0, 1609.0]


def test_node_whose_key_expired_is_listed_offline(redis_url, queue, registry):
    status = a_status()
    with_writer(redis_url, queue, "alpha", lambda w: w.publish(status, {"t": 1.0, "cpu": 5.0, "mem": 0.3}), ttl=0.3)
    assert registry.node("alpha").status == "busy"
    time.sleep(0.5)

    [offline] = registry.nodes()
    assert (offline.name, offline.status, offline.online) == ("alpha", "offline", False)
    assert offline.last_seen == pytest.approx(status.last_seen, abs=0.002)
    assert registry.node("alpha").status == "offline"
    assert len(registry.samples("alpha")) == 1  # the chart survives the node


def test_remove_marks_offline_at_once_and_keeps_samples(redis_url, queue, registry):
    async def publish_then_remove(writer):
        await writer.publish(a_status(), {"t": 1.0, "cpu": 5.0, "mem": 0.3})
        await writer.remove()

    before = time.time()
    with_writer(redis_url, queue, "alpha", publish_then_remove)

    [node] = registry.nodes()
    assert node.status == "offline"
    assert node.last_seen >= before - 0.01
    assert registry.samples("alpha") == [{"t": 1.0, "cpu": 5.0, "mem": 0.3}]


def test_nodes_are_sorted_and_stale_ones_pruned(redis_url, queue, registry, client):
    async def publish_two(writer):
        await writer.publish(a_status("zulu"))
        await NodeRegistryWriter(writer.redis, queue, "alpha").publish(a_status("alpha"))

    client.zadd(Keyspace(queue).nodes, {"ancient": (time.time() - 2 * 24 * 3600) * 1000})
    with_writer(redis_url, queue, "zulu", publish_two)

    assert [n.name for n in registry.nodes()] == ["alpha", "zulu"]
    assert client.zscore(Keyspace(queue).nodes, "ancient") is None  # pruned by the writers


def test_set_desired_state_on_unknown_node_lists_known_ones(redis_url, queue, registry):
    with pytest.raises(UnknownNodeError, match=f"ENCODEFLOW_QUEUE={queue}"):
        registry.set_desired_state("ghost", "pause")

    with_writer(redis_url, queue, "alpha", lambda w: w.publish(a_status()))
    with pytest.raises(UnknownNodeError) as caught:
        registry.set_desired_state("ghost", "pause")
    message = str(caught.value)
    assert "'ghost'" in message and "alpha (busy)" in message and queue in message

    with pytest.raises(ValueError, match="run, pause, drain"):
        registry.set_desired_state("alpha", "sleep")


def test_desired_state_round_trip(redis_url, queue, registry):
    async def states(writer):
        seen = [await writer.desired_state()]
        await writer.publish(a_status())
        for state in ("pause", "drain", "run"):
            await asyncio.to_thread(registry.set_desired_state, "alpha", state)
            seen.append(await writer.desired_state())
        return seen

    assert with_writer(redis_url, queue, "alpha", states) == ["run", "pause", "drain", "run"]
    assert registry.desired_state("alpha") == "run"


def test_control_change_is_announced_within_a_second(redis_url, queue, registry):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        writer = NodeRegistryWriter(client, queue, "alpha")
        await writer.publish(a_status())
        await NodeRegistryWriter(client, queue, "beta").publish(a_status("beta"))
        received: list[tuple[str, float]] = []
        ready = asyncio.Event()
        listener = asyncio.create_task(
            control_listener(
                client, queue, "alpha", lambda state: received.append((state, time.monotonic())), ready=ready
            )
        )
        try:
            await asyncio.wait_for(ready.wait(), 2)
            await asyncio.to_thread(registry.set_desired_state, "beta", "pause")  # not for alpha
            sent = time.monotonic()
            await asyncio.to_thread(registry.set_desired_state, "alpha", "drain")
            while not received and time.monotonic() - sent < 1:
                await asyncio.sleep(0.01)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await client.aclose()
        return received, sent

    received, sent = asyncio.run(main())
    assert [state for state, _ in received] == ["drain"]
    assert received[0][1] - sent < 1


def test_forget_removes_every_trace(redis_url, queue, registry, client):
    with_writer(redis_url, queue, "alpha", lambda w: w.publish(a_status(), {"t": 1.0, "cpu": 1.0, "mem": 0.1}))
    registry.set_desired_state("alpha", "pause")

    assert registry.forget("alpha") is True
    assert registry.nodes() == [] and registry.node("alpha") is None and registry.samples("alpha") == []
    assert client.keys(f"*{queue}*") == []
    assert registry.forget("alpha") is False


def test_status_json_round_trip_ignores_unknown_fields():
    status = a_status()
    assert NodeStatus.from_json(status.to_json()) == status
    newer = status.to_json()[:-1] + ',"gpu":{"name":"A100"}}'
    assert NodeStatus.from_json(newer) == status
    with pytest.raises(ValueError):
        NodeStatus.from_json('{"host": "no name"}')


def test_node_names_that_would_break_the_key_layout_are_refused(queue):
    for bad in ("", "a:samples", "two words"):
        with pytest.raises(ValueError, match="node name"):
            NodeRegistryWriter(object(), queue, bad)


def test_a_status_of_the_wrong_shape_in_redis_is_read_with_defaults_and_listed_in_one_line(
    redis_url, queue, registry, client
):
    """Anyone who can write to Redis can write a node's status: a reader keeps what has the right
    type and never trips on the rest (``encodeflow nodes`` sliced a job id that was a number)."""
    import json
    import subprocess
    import sys

    with_writer(redis_url, queue, "alpha", lambda w: w.publish(a_status()))
    hostile = {
        "name": "alpha",
        "host": ["not", "text"],
        "pid": "4242",
        "status": "busy",
        "cpu": "lots",
        "running": [{"jobId": 12345, "progress": "x"}, "not an object", {"jobId": "job-2\nforged"}],
        "encoders": "libx264",
        "tags": [1, "gpu"],
        "last_seen": time.time(),
    }
    client.set(Keyspace(queue).node("alpha"), json.dumps(hostile))

    [node] = registry.nodes()
    assert (node.name, node.host, node.pid, node.cpu, node.encoders, node.tags) == ("alpha", "", 0, 0.0, [], ["gpu"])
    assert node.running == [{"jobId": "?", "progress": 0.0}, {"jobId": "job-2\nforged", "progress": 0.0}]

    env = {**os.environ, "ENCODEFLOW_REDIS_URL": redis_url, "ENCODEFLOW_QUEUE": queue}
    listed = subprocess.run(
        [sys.executable, "-m", "farm", "nodes"], capture_output=True, text=True, env=env, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if "alpha" in line]
    assert len(lines) == 1 and "forged" not in listed.stdout.replace(lines[0], ""), listed.stdout
    assert listed.stderr == ""
