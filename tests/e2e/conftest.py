"""A real local farm in processes: the embedded Redis, SQLite and folder storage of the test's data
dir, and ``farm-node`` processes started the way an admin starts them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from farm.base.settings import Settings
from farm.services.embedded import ensure_embedded_redis
from tests.e2e.helpers import wait_for


class NodeProcess:
    def __init__(self, name: str, data_dir: Path, extra: list[str] = ()):
        self.name = name
        self.work_dir = data_dir / "work" / name
        self.log = data_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "farm_node",
                "--name",
                name,
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                "0",
                *extra,
            ],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def ffmpeg_children(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "ffmpeg" in (c.name() or "")]

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as an admin stops a node: it drains (finishes its job) within ``timeout``, or a
        second SIGTERM makes it hand the job back. ``timeout=0`` is a stop in a hurry: the second
        SIGTERM follows as soon as the first has surely arrived."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # Two signals sent back to back may arrive as one: give the first a moment alone.
                return self.proc.wait(timeout or 1.0)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def local_farm(data_dir):
    """start(n) -> list of NodeProcess sharing the test's data dir and settings.

    With no ENCODEFLOW_REDIS_URL (the default) the farm uses the data dir's embedded Redis; a test
    that requests `redis_url`, `pg_url` or `s3_url` first runs the nodes on those services instead.
    """
    settings = Settings.load()
    redis_server = None if settings.redis_url else ensure_embedded_redis(settings)
    redis_url = settings.redis_url or redis_server.url
    nodes: list[NodeProcess] = []

    def start(count: int = 1, extra: list[str] = ()) -> list[NodeProcess]:
        import redis

        from farm.services.registry import NodeRegistry

        started = [NodeProcess(f"node-{len(nodes) + i + 1}", data_dir, list(extra)) for i in range(count)]
        nodes.extend(started)
        registry = NodeRegistry(redis.Redis.from_url(redis_url, decode_responses=True), settings.queue)
        wait_for(
            lambda: {n.name for n in started} <= {n.name for n in registry.nodes() if n.online},
            timeout=60,
            what="nodes to register",
        )
        return started

    def start_named(name: str, extra: list[str] = ()) -> NodeProcess:
        """Start one node with the given name (e.g. to restart a node that exited)."""
        import redis

        from farm.services.registry import NodeRegistry

        node = NodeProcess(name, data_dir, list(extra))
        nodes.append(node)
        registry = NodeRegistry(redis.Redis.from_url(redis_url, decode_responses=True), settings.queue)
        wait_for(
            lambda: any(n.name == name and n.online and n.pid == node.proc.pid for n in registry.nodes()),
            timeout=60,
            what=f"node {name} to register",
        )
        return node

    start.nodes = nodes
    start.start_named = start_named
    start.settings = settings
    start.redis_url = redis_url
    yield start
    # A test that is about draining stops its nodes itself; the rest need not wait for a job to end.
    for node in nodes:
        node.stop(timeout=0)
    leftovers = [c for node in nodes for c in node.ffmpeg_children()]
    if redis_server is not None:
        redis_server.stop()
    assert not leftovers, f"FFmpeg left running: {leftovers}"


@pytest.fixture
def farm(local_farm):
    """The farm client on the local farm's settings (what the CLI and the panel use)."""
    from farm.client import Farm

    client = Farm(local_farm.settings, start_embedded=False)
    yield client
    client.close()


@pytest.fixture
def long_clip(make_clip):
    """A clip whose HEVC transcode is still running when a test acts on it."""
    from tests.e2e.helpers import LONG_CLIP

    return make_clip(**LONG_CLIP)
