"""The window's live feed: the listener threads, their signals in one place, and the latest state.

Pages connect to the hub's signals instead of to the threads, so a page never owns a thread and
the window starts and stops them all together. The hub also keeps the latest nodes and counts, so
a page created later (or a dialog) can draw at once.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.listeners import FarmPollThread, JobEventThread
from app.services import AppServices


class FarmHub(QObject):
    job_event = Signal(object)  # farm.services.events.JobEvent
    events_reconnected = Signal()  # reconcile from the database: events may have been missed
    nodes_updated = Signal(list)  # list[NodeStatus]
    samples_added = Signal(dict)  # {node: [sample]}
    counts_updated = Signal(dict)  # queue counts
    connection_changed = Signal(str, bool, str)  # service ("redis", "database", "storage"), ok, message

    def __init__(self, services: AppServices, poll_interval: float = 1.0, parent=None):
        super().__init__(parent)
        self.services = services
        self.poll_interval = poll_interval
        self.nodes: list = []
        self.counts: dict = {}
        self.connections: dict[str, tuple[bool, str]] = {}
        self._threads: list = []
        self.nodes_updated.connect(self._keep_nodes)
        self.counts_updated.connect(self._keep_counts)
        self.connection_changed.connect(lambda name, ok, msg: self.connections.__setitem__(name, (ok, msg)))

    def _keep_nodes(self, nodes: list) -> None:
        self.nodes = nodes

    def _keep_counts(self, counts: dict) -> None:
        self.counts = counts

    def start(self) -> None:
        if self._threads:
            return
        queue = self.services.settings.queue
        events = JobEventThread(self.services.redis_url, queue, self)
        events.job_event.connect(self.job_event)
        events.reconnected.connect(self.events_reconnected)
        poll = FarmPollThread(self.services.redis_url, queue, self.poll_interval, self)
        poll.nodes_updated.connect(self.nodes_updated)
        poll.samples_added.connect(self.samples_added)
        poll.counts_updated.connect(self.counts_updated)
        poll.connection_changed.connect(lambda ok, msg: self.connection_changed.emit("redis", ok, msg))
        self._threads = [events, poll]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for thread in self._threads:
            thread.stop()
        self._threads = []

    def restart(self) -> None:
        """After the settings changed (another Redis or queue)."""
        self.stop()
        self.start()
