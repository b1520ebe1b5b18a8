"""One node up close: live CPU % and memory % for the last 10 minutes, at one sample a second.

The charts are seeded once with the node's sample series from Redis (through the runner), then
fed by the hub's ``samples_added``; a sample already shown is never added twice, whichever of the
two arrives first.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from app.hub import FarmHub
from app.models.nodes_model import STATUS_COLORS, format_ago, running_text
from app.runner import BackgroundRunner
from app.services import AppServices
from app.widgets.live_chart import LiveChart
from farm.domain.nodes import MAX_SAMPLES, NodeStatus


class WorkerDetail(QWidget):
    """Live charts of one node; shown by the Workers page in a window of its own."""

    def __init__(self, services: AppServices, runner: BackgroundRunner, hub: FarmHub, name: str, parent=None):
        super().__init__(parent)
        self.services, self.runner, self.hub, self.name = services, runner, hub, name
        self._closed = False
        self.setObjectName("page")
        self.setWindowTitle(f"{name} — CPU and memory")
        self.resize(900, 620)

        title = QLabel(name)
        title.setTextFormat(Qt.TextFormat.PlainText)  # a name from the registry is not markup
        title.setObjectName("pageTitle")
        self.badge = QLabel()
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        header = QHBoxLayout()
        header.addWidget(title)
        header.addWidget(self.badge, 0, Qt.AlignmentFlag.AlignVCenter)
        header.addStretch(1)
        self.summary = QLabel("Waiting for the node's next report…")
        self.summary.setObjectName("statLabel")
        self.summary.setWordWrap(True)
        self.error = QLabel()
        self.error.setObjectName("notice")
        self.error.setWordWrap(True)
        self.error.hide()

        self.cpu_chart = LiveChart("CPU (% of the machine)", "%", y_range=(0, 100), capacity=MAX_SAMPLES)
        self.mem_chart = LiveChart("Memory in use (% of the machine)", "%", y_range=(0, 100), capacity=MAX_SAMPLES)
        self.cpu_chart.add_series("cpu", "CPU", color="#2f6fdb")
        self.mem_chart.add_series("mem", "Memory", color="#9467bd")
        for chart in (self.cpu_chart, self.mem_chart):
            chart.setMinimumHeight(200)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addLayout(header)
        layout.addWidget(self.summary)
        layout.addWidget(self.error)
        layout.addWidget(self.cpu_chart, 1)
        layout.addWidget(self.mem_chart, 1)

        hub.samples_added.connect(self._on_samples)
        hub.nodes_updated.connect(self._on_nodes)
        self._on_nodes(hub.nodes)
        runner.run(lambda: services.farm.node_samples(name), self._seeded, self._seed_failed)

    @property
    def is_closed(self) -> bool:
        return self._closed

    # -- data ---------------------------------------------------------------------------------------
    def sample_count(self) -> int:
        return len(self.cpu_chart.buffer("cpu"))

    def add_samples(self, samples: list[dict]) -> None:
        """Live samples, oldest first (older or repeated ones are skipped)."""
        for sample in samples:
            t = sample.get("t")
            if t is None:
                continue
            self.cpu_chart.append("cpu", t, float(sample.get("cpu", 0.0)))
            self.mem_chart.append("mem", t, float(sample.get("mem", 0.0)) * 100)

    def _on_samples(self, fresh: dict) -> None:
        if not self._closed and self.name in fresh:
            self.add_samples(fresh[self.name])

    def _seeded(self, samples: list[dict]) -> None:
        if self._closed:
            return
        samples = [s for s in samples if s.get("t") is not None]
        times = [s["t"] for s in samples]
        self.cpu_chart.merge("cpu", times, [float(s.get("cpu", 0.0)) for s in samples])
        self.mem_chart.merge("mem", times, [float(s.get("mem", 0.0)) * 100 for s in samples])

    def _seed_failed(self, exc: Exception) -> None:
        if self._closed:
            return
        self.error.setText(
            f"Could not load {self.name}'s last 10 minutes from Redis ({exc}). "
            "The charts fill from now on; check the Redis connection in the status bar."
        )
        self.error.show()

    def _on_nodes(self, nodes: list[NodeStatus]) -> None:
        if self._closed:
            return
        node = next((n for n in nodes if n.name == self.name), None)
        if node is None:
            return
        color = STATUS_COLORS.get(node.status, STATUS_COLORS["offline"])
        self.badge.setText(node.status)
        self.badge.setStyleSheet(
            f"background: {color}; color: #ffffff; border-radius: 9px; padding: 2px 10px; font-weight: 600;"
        )
        if node.online:
            parts = [
                node.host or "unknown host",
                f"CPU {node.cpu:.0f} %",
                f"memory {node.memory * 100:.0f} %",
                f"running: {running_text(node)}",
            ]
        else:
            last = f"no heartbeat since {format_ago(time.time() - node.last_seen)}" if node.last_seen else "never seen"
            parts = [node.host or "unknown host", last]
        self.summary.setText(" · ".join(parts))

    # -- closing ----------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        self.disconnect_hub()
        super().closeEvent(event)

    def disconnect_hub(self) -> None:
        if self._closed:
            return
        self._closed = True
        for signal, slot in ((self.hub.samples_added, self._on_samples), (self.hub.nodes_updated, self._on_nodes)):
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):
                pass
        for chart in (self.cpu_chart, self.mem_chart):
            chart.timer.stop()
