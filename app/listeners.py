"""Long-lived listeners, one ``QThread`` each, started and stopped with the main window.

``JobEventThread`` follows BullMQ's event stream (push: progress reaches the jobs table without a
database poll); ``FarmPollThread`` reads the node registry, the nodes' CPU/memory samples and the
queue counts once a second. Both check a stop flag, reconnect by themselves, and report the state of
their connection. ``live_threads()`` lists the ones still running, so tests can fail a test that
leaves one behind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Callable

from PySide6.QtCore import QThread, Signal

from farm.services.events import JobEventListener

log = logging.getLogger(__name__)

_threads: "weakref.WeakSet[StoppableThread]" = weakref.WeakSet()


def live_threads() -> list["StoppableThread"]:
    return [t for t in list(_threads) if t.isRunning()]


class StoppableThread(QThread):
    """A QThread with a stop flag; ``stop()`` asks, waits, and gives up after ``timeout_ms``."""

    connection_changed = Signal(bool, str)  # connected, message

    def __init__(self, parent=None):
        super().__init__(parent)
        self._stop = threading.Event()
        self._connected: bool | None = None
        _threads.add(self)

    def stop(self, timeout_ms: int = 5000) -> bool:
        self._stop.set()
        return self.wait(timeout_ms)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _report(self, connected: bool, message: str = "") -> None:
        if connected != self._connected:
            self._connected = connected
            self.connection_changed.emit(connected, message)


class JobEventThread(StoppableThread):
    job_event = Signal(object)  # farm.services.events.JobEvent
    reconnected = Signal()

    def __init__(self, redis_url: Callable[[], str], queue: str, parent=None):
        super().__init__(parent)
        self.redis_url = redis_url
        self.queue = queue
        self._listener: JobEventListener | None = None

    def stop(self, timeout_ms: int = 5000) -> bool:
        if self._listener is not None:
            self._listener.stop()
        return super().stop(timeout_ms)

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping:
            try:
                url = self.redis_url()
            except Exception as exc:  # the local farm may still be starting
                self._report(False, str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5)
                continue
            self._listener = JobEventListener(url, self.queue, block_ms=500,
                                              on_reconnect=self.reconnected.emit)
            if self.stopping:
                break
            for event in self._listener.events(yield_idle=True):
                self._report(self._listener.connected, "" if self._listener.connected else "Redis unreachable")
                if event is not None:
                    self.job_event.emit(event)
            return


class FarmPollThread(StoppableThread):
    """Once a second: the nodes, their new samples, and the queue's counts."""

    nodes_updated = Signal(list)  # list[farm.services.registry.NodeStatus]
    samples_added = Signal(dict)  # {node name: [sample, ...]} new since the last poll
    counts_updated = Signal(dict)  # {"waiting": n, "active": n, ...}

    def __init__(self, redis_url: Callable[[], str], queue: str, interval: float = 1.0, parent=None):
        super().__init__(parent)
        self.redis_url = redis_url
        self.queue = queue
        self.interval = interval

    def run(self) -> None:
        import redis

        from farm.services.queue import QueueClient
        from farm.services.registry import NodeRegistry

        loop = asyncio.new_event_loop()
        client = queue = None
        last_sample: dict[str, float] = {}
        backoff = self.interval
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    if client is None:
                        url = self.redis_url()
                        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                                      socket_connect_timeout=3)
                        queue = QueueClient(url, self.queue)
                    registry = NodeRegistry(client, self.queue)
                    nodes = registry.nodes()
                    fresh = {}
                    for node in nodes:
                        samples = registry.samples(node.name, since=last_sample.get(node.name))
                        if samples:
                            last_sample[node.name] = samples[-1]["t"]
                            fresh[node.name] = samples
                    counts = loop.run_until_complete(queue.counts())
                except Exception as exc:
                    self._report(False, f"Redis: {type(exc).__name__}: {exc}")
                    if client is not None:
                        client.close()
                    if queue is not None:
                        loop.run_until_complete(_quietly(queue.close()))
                    client = queue = None
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                backoff = self.interval
                self._report(True)
                self.nodes_updated.emit(nodes)
                if fresh:
                    self.samples_added.emit(fresh)
                self.counts_updated.emit(counts)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            if client is not None:
                client.close()
            if queue is not None:
                loop.run_until_complete(_quietly(queue.close()))
            loop.close()


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception:
        pass
