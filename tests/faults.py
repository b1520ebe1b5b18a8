"""Faults for tests: a TCP proxy that a test can cut or stall, and a Redis that it can restart.

Stopping the real PostgreSQL or moto server would lose their data (moto keeps it in memory) and
disturb other tests sharing them, so outage tests put this proxy between the farm and the server and
break the link instead:

- ``cut()``: every open connection is reset and new ones are refused (the server is down);
- ``stall()``: connections are accepted but nothing is forwarded (the server hangs);
- ``restore()``: back to normal, on the same port.

    with FaultyLink("127.0.0.1", 5432) as link:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{link.port}/test"
        ...
        link.cut(); ...; link.restore()
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import redis

from farm.base.ports import free_port
from farm.services.embedded import find_redis_server

_CHUNK = 64 * 1024


class FaultyLink:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.accepted = 0  # connections accepted so far (a test can see that clients reconnected)
        self._mode = "up"  # up | stalled | down
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket | None]] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FaultyLink:
        self._listen()
        return self

    def close(self) -> None:
        self._stop.set()
        self._close_listener()
        self._drop_all()

    def __enter__(self) -> FaultyLink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- faults ---------------------------------------------------------------------------------
    def cut(self) -> None:
        """The server goes away: reset open connections, refuse new ones (port closed)."""
        with self._lock:
            self._mode = "down"
        self._close_listener()
        self._drop_all()

    def stall(self) -> None:
        """The server hangs: connections stay open (new ones are accepted) but no byte moves."""
        with self._lock:
            self._mode = "stalled"

    def restore(self) -> None:
        """Back to normal on the same port. Connections made while stalled start forwarding."""
        was_down = self._mode == "down"
        with self._lock:
            self._mode = "up"
        if was_down:
            self._listen()

    # -- internals ------------------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.listen_host, self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(sock,), daemon=True, name=f"faulty-link-{self.port}"
        )
        self._accept_thread.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
            self._accept_thread = None

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed (cut or close)
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        pair = (client, None)
        with self._lock:
            self._pairs.add(pair)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._pairs.discard(pair)
                pair = (client, upstream)
                self._pairs.add(pair)
            sockets = [client, upstream]
            while not self._stop.is_set():
                if self._mode != "up":  # stalled: hold the bytes; down: _drop_all closes us
                    self._stop.wait(0.05)
                    if self._mode == "down":
                        return
                    continue
                readable, _, _ = select.select(sockets, [], [], 0.1)
                for sock in readable:
                    if self._mode != "up":
                        break  # stalled between select and recv: leave the bytes where they are
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):  # ValueError: select on a socket _drop_all just closed
            return
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _reset(client)
            if upstream is not None:
                _reset(upstream)

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for client, upstream in pairs:
            _reset(client)
            if upstream is not None:
                _reset(upstream)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a server that died would, not a polite FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class RestartableRedis:
    """A private ``redis-server`` with AOF on a port and directory of its own.

    ``stop()`` is SHUTDOWN (Redis flushes its AOF and exits, as a service stop does); ``start()``
    again uses the same port and directory, so it loads the AOF and clients find it where it was.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                find_redis_server(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=(self.directory / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            client.shutdown()
        except redis.ConnectionError:  # the connection closes as the server exits
            pass
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def _answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.ConnectionError:
            return False
