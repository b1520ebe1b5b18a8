"""A whole farm on one machine: the embedded Redis and N ``farm-node`` processes.

Used by ``encodeflow up``, ``encodeflow demo`` and the desktop app when no Redis is configured.
Nodes are child processes (not threads) so that they are exactly what a studio runs, and so that
FFmpeg work never competes with the caller's event loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from farm.base.child_guard import ChildGuard, Watch
from farm.base.ports import free_port
from farm.base.settings import ENV_VARS, Settings
from farm.domain.media import find_ffmpeg
from farm.domain.nodes import check_node_name
from farm.services.embedded import EmbeddedRedis, ensure_embedded_redis
from farm.services.registry import NodeNameTaken, NodeRegistry, host_node_name

DRAIN_TIMEOUT_S = 600  # a running transcode gets this long to finish on a normal stop


def node_command() -> list[str]:
    """How to start a farm node from this process.

    In a PyInstaller bundle ``sys.executable`` is the bundle's own program (the panel, or the
    ``encodeflow`` CLI), not a Python that takes ``-m``; both bundles ship ``farm-node`` next to it.
    """
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).with_name("farm-node.exe" if os.name == "nt" else "farm-node"))]
    return [sys.executable, "-m", "farm_node"]


class LocalFarm:
    def __init__(
        self,
        settings: Settings,
        nodes: int = 1,
        concurrency: int = 1,
        keep_redis: bool = False,
        node_prefix: str | None = None,
        role: str = "local",
        tied_to_caller: bool = False,
    ):
        self.settings = settings
        self.count = nodes
        self.concurrency = concurrency
        self.keep_redis = keep_redis
        self.node_prefix = node_prefix  # nodes are <prefix>-1, -2 ...; by default <host>-<role>-1 ...
        self.role = role
        # The nodes of a farm in the foreground (`encodeflow up`, `demo`) go when it goes, however
        # it ends: a parent-death SIGTERM makes each drain. The panel's may outlive it by choice, and
        # it starts them from a pool thread (the Linux signal follows the forking thread): untied.
        self.tied_to_caller = tied_to_caller
        self._watches: list[Watch] = []
        self.redis: EmbeddedRedis | None = None
        self.procs: list[tuple[dict[str, Any], subprocess.Popen[bytes]]] = []
        self._stop = threading.Event()

    def __enter__(self) -> LocalFarm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.settings.uses_embedded_redis:
            self.redis = ensure_embedded_redis(self.settings)
        env = dict(os.environ)
        for name, var in ENV_VARS.items():
            value = getattr(self.settings, name, None)
            if value is not None:
                env[var] = str(value)
        names = [self.node_name(index) for index in range(1, self.count + 1)]
        self._refuse_if_running(names)
        for name in names:
            port = free_port()
            info: dict[str, Any] = {"name": name, "metrics_port": port}
            cmd = [
                *node_command(),
                "--name",
                name,
                "--concurrency",
                str(self.concurrency),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            ]
            # Own process group: a terminal's Ctrl-C reaches only us, and we drain the nodes once;
            # had they got it too, our SIGTERM would be their second signal (a cold stop).
            guard = ChildGuard(sig=signal.SIGTERM) if self.tied_to_caller else None
            proc = subprocess.Popen(
                guard.command(cmd) if guard else cmd,
                env=env,
                start_new_session=True,
                **(guard.popen_kwargs() if guard else {}),
            )
            self.procs.append((info, proc))
            if guard:
                self._watches.append(guard.watch(proc.pid))

    def node_name(self, index: int) -> str:
        if self.node_prefix:
            return check_node_name(f"{self.node_prefix}-{index}")
        return host_node_name(f"-{self.role}-{index}")

    def _refuse_if_running(self, names: list[str]) -> None:
        """A second farm on one data dir would run its nodes under the first one's names: say so
        before starting any (each node would refuse to start anyway, one line each)."""
        url = self.redis.url if self.redis is not None else self.settings.redis_url
        assert url, "a farm without an embedded Redis is configured with one"
        with redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5) as client:
            holders = {name: NodeRegistry(client, self.settings.queue).name_holder(name) for name in names}
        for name, holder in holders.items():
            if holder is not None:
                raise NodeNameTaken(
                    f"a local farm is already running on queue {self.settings.queue!r}: its node "
                    f"{name} is pid {holder.pid} on {holder.host}; use that farm, or stop it "
                    "(Ctrl-C where it runs) before starting another",
                    holder,
                )

    def node_info(self) -> list[dict[str, Any]]:
        return [info | {"pid": proc.pid, "alive": proc.poll() is None} for info, proc in self.procs]

    def wait(self) -> None:
        """Block until Ctrl-C or SIGTERM (or every node exited)."""
        previous = signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            while not self._stop.is_set() and any(p.poll() is None for _, p in self.procs):
                self._stop.wait(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Drain the nodes (SIGTERM), hand jobs back if they take too long, then stop Redis."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout
        try:
            for _, proc in self.procs:
                _wait(proc, deadline)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, the jobs go back to the queue
            pass
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            _wait(proc, time.monotonic() + 15)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for watch in self._watches:
            watch.release()
        self._watches.clear()
        if self.redis is not None and self.redis.started_here and not self.keep_redis:
            self.redis.stop()
        self.redis = None


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass


def make_sample_clip(path: Path, seconds: float = 5.0) -> Path:
    """A 720p test-pattern clip with a tone, made with FFmpeg (what `encodeflow demo` transcodes)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1280x720:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
    )
    return path
