"""Who holds a node name, against the machine's Redis and real processes: a live node keeps it, a
dead one's claim is taken over, and of two nodes starting at once only one gets it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis

from farm.domain.keyspace import Keyspace
from farm.domain.nodes import NodeStatus, check_node_name
from farm.services.registry import (
    NodeClaim,
    NodeNameTaken,
    NodeRegistry,
    NodeRegistryWriter,
    host_node_name,
)
from tests.processes import node_like

HOST = socket.gethostname()


@pytest.fixture
def queue(redis_url) -> str:
    return os.environ["ENCODEFLOW_QUEUE"]


@pytest.fixture
def client(redis_url):
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


def claim(redis_url: str, queue: str, name: str, then=None, **options):
    """Claim ``name`` with a fresh writer, run ``await then(writer)`` if given, and return the writer."""

    async def main():
        async with aioredis.Redis.from_url(redis_url, decode_responses=True) as conn:
            writer = NodeRegistryWriter(conn, queue, name, **options)
            await writer.claim()
            if then is not None:
                await then(writer)
            return writer

    return asyncio.run(main())


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_free_name_is_claimed_refreshed_by_the_heartbeat_and_released(redis_url, queue, client):
    key = Keyspace(queue).claim("n1")

    async def beat_then_release(writer):
        client.pexpire(key, 500)
        await writer.publish(NodeStatus(name="n1", host=HOST, pid=os.getpid()))
        assert client.pttl(key) > 5_000, "each publish gives the claim the status key's TTL again"
        await writer.release()

    claim(redis_url, queue, "n1", beat_then_release)
    assert client.get(key) is None


def test_a_claim_that_expired_during_an_outage_is_taken_again_but_never_stolen(redis_url, queue, client, caplog):
    key = Keyspace(queue).claim("n1")

    async def outage(writer):
        client.delete(key)  # expired while Redis was away
        await writer.publish(NodeStatus(name="n1", host=HOST, pid=os.getpid()))
        assert NodeClaim.from_json(client.get(key)) == NodeClaim.mine()
        client.set(key, NodeClaim("render-07", 77).to_json())  # a node of this name started meanwhile
        await writer.publish(NodeStatus(name="n1", host=HOST, pid=os.getpid()))
        await writer.publish(NodeStatus(name="n1", host=HOST, pid=os.getpid()))
        await writer.release()

    claim(redis_url, queue, "n1", outage)
    assert NodeClaim.from_json(client.get(key)) == NodeClaim("render-07", 77), "never overwritten nor released"
    errors = [r.getMessage() for r in caplog.records if "another node took this name" in r.getMessage()]
    assert len(errors) == 1, "said once, not on every beat"


def test_a_live_node_on_another_host_keeps_its_name(redis_url, queue, client):
    client.set(Keyspace(queue).claim("n1"), NodeClaim("render-07", 4242).to_json(), px=15_000)
    with pytest.raises(NodeNameTaken) as taken:
        claim(redis_url, queue, "n1")
    assert str(taken.value) == (
        "a node named n1 is already running: pid 4242 on host render-07 (if that node is "
        "gone, its claim expires within 15 s); give this node another --name, or stop "
        "that one first"
    )


def test_a_live_node_of_an_older_version_without_a_claim_keeps_its_name(redis_url, queue, client, tmp_path):
    older = node_like(tmp_path)
    try:
        status = NodeStatus(name="n1", host=HOST, pid=older.pid)
        client.set(Keyspace(queue).node("n1"), status.to_json(), px=20_000)
        with pytest.raises(NodeNameTaken, match=f"pid {older.pid} on this host"):
            claim(redis_url, queue, "n1")
        assert client.get(Keyspace(queue).claim("n1")) is None, "the refused node gave its claim back"
    finally:
        older.kill()
        older.wait(10)
    claim(redis_url, queue, "n1")  # its pid is gone now: a dead run's leftover status


@pytest.mark.parametrize("holder", ["dead pid", "own pid", "not a node", "garbage"])
def test_a_claim_left_by_a_dead_run_on_this_host_is_taken_over(redis_url, queue, client, holder):
    key = Keyspace(queue).claim("n1")
    value = {
        "dead pid": NodeClaim(HOST, dead_pid()).to_json(),
        "own pid": NodeClaim.mine().to_json(),  # a container restarted with its pid
        "not a node": NodeClaim(HOST, os.getppid()).to_json(),  # pid reused by another program
        "garbage": "not json",
    }[holder]
    client.set(key, value, px=20_000)
    claim(redis_url, queue, "n1")
    assert NodeClaim.from_json(client.get(key)) == NodeClaim.mine()


def test_of_two_nodes_claiming_at_the_same_instant_only_one_runs(redis_url, queue, tmp_path):
    at = time.time() + 3  # both processes are up and waiting by then
    code = f"""
        import asyncio, time
        import redis.asyncio as aioredis
        from farm.services.registry import NodeNameTaken, NodeRegistryWriter

        async def main():
            conn = aioredis.Redis.from_url({redis_url!r}, decode_responses=True)
            writer = NodeRegistryWriter(conn, {queue!r}, "twin")
            time.sleep(max(0.0, {at} - time.time()))
            try:
                await writer.claim()
                print("claimed", flush=True)
            except NodeNameTaken as exc:
                print(exc, flush=True)
        asyncio.run(main())
    """
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nodes = [node_like(tmp_path / "a", code), node_like(tmp_path / "b", code)]
    try:
        said = sorted(node.stdout.readline().strip() for node in nodes)
    finally:
        for node in nodes:
            node.send_signal(signal.SIGKILL)
            node.wait(10)
    assert said.count("claimed") == 1, said
    assert [line for line in said if line != "claimed"][0].startswith("a node named twin is already running: pid ")


def test_names_are_plain_and_the_host_name_always_makes_one(monkeypatch):
    for good in ("render-01", "edit.bay_2", "a", "x" * 64):
        assert check_node_name(good) == good
    for bad in ("", ".", "..", "../x", "/abs/path", "a b", "a:b", "-rf", ".hidden", "x" * 65, "a\nb", "é"):
        with pytest.raises(ValueError, match="is not allowed: use 1 to 64 letters, digits"):
            check_node_name(bad)
    assert host_node_name() == check_node_name(host_node_name())
    monkeypatch.setattr(socket, "gethostname", lambda: "Edit Bay #2 " + "x" * 80)
    assert host_node_name("-local-1") == "Edit-Bay--2-" + "x" * 44 + "-local-1"
    assert len(host_node_name("-local-1")) == 64


def test_remote_control_refuses_a_name_no_node_can_have(redis_url, queue, client):
    from farm.domain.nodes import UnknownNodeError

    with pytest.raises(UnknownNodeError, match="no such node: node name '../x' is not allowed"):
        NodeRegistry(client, queue).set_desired_state("../x", "drain")
    assert json.dumps(NodeRegistry(client, queue).nodes()) == "[]"
