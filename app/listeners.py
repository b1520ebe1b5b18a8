"""Long-lived listeners, one ``QThread`` each, started and stopped with the main window.

``JobEventThread`` follows BullMQ's event stream (push: progress reaches the jobs table without a
database poll); ``FarmPollThread`` reads the node registry, the nodes' CPU/memory samples and the
queue counts once a second. Both check a stop flag, reconnect by themselves, and report the state of
their connection. ``live_threads()`` lists the ones still running, so tests can fail a test that
leaves one behind.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from PySide6.QtCore import QThread, Signal

from farm.base.backoff import Backoff
from farm.client import FarmMonitor
from farm.services.events import JobEventListener

log = logging.getLogger(__name__)

_threads: weakref.WeakSet[StoppableThread] = weakref.WeakSet()


def live_threads() -> list[StoppableThread]:
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
        backoff = Backoff(first=0.5, cap=5)
        while not self.stopping:
            try:
                url = self.redis_url()
            except Exception as exc:  # the local farm may still be starting
                self._report(False, str(exc))
                self._stop.wait(backoff.next())
                continue
            self._listener = JobEventListener(url, self.queue, block_ms=500, on_reconnect=self.reconnected.emit)
            if self.stopping:
                break
            for event in self._listener.events(yield_idle=True):
                self._report(self._listener.connected, "" if self._listener.connected else "Redis unreachable")
                if event is not None:
                    self.job_event.emit(event)
            return


class FarmPollThread(StoppableThread):
    """Once a second: the nodes, their new samples, and the queue's counts."""

    nodes_updated = Signal(list)  # list[farm.domain.nodes.NodeStatus]
    samples_added = Signal(dict)  # {node name: [sample, ...]} new since the last poll
    counts_updated = Signal(dict)  # {"waiting": n, "active": n, ...}

    def __init__(self, redis_url: Callable[[], str], queue: str, interval: float = 1.0, parent=None):
        super().__init__(parent)
        self.redis_url = redis_url
        self.queue = queue
        self.interval = interval

    def run(self) -> None:
        monitor = FarmMonitor(self.redis_url, self.queue)
        backoff = Backoff(first=self.interval, cap=10)
        try:
            while not self.stopping:
                started = time.monotonic()
                try:
                    snapshot = monitor.poll()
                except Exception as exc:  # the monitor dropped its connection; the next poll reconnects
                    self._report(False, f"Redis: {type(exc).__name__}: {exc}")
                    self._stop.wait(backoff.next())
                    continue
                backoff.reset()
                self._report(True)
                self.nodes_updated.emit(snapshot.nodes)
                if snapshot.fresh_samples:
                    self.samples_added.emit(snapshot.fresh_samples)
                self.counts_updated.emit(snapshot.counts)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            monitor.close()
