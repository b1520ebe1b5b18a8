"""Dashboard: jobs by status, nodes online and busy, the last hour's results, the latest jobs."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QGridLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from farm.client import FarmSummary
from farm.domain.job import isoformat

RECENT_ROWS = 10
REFRESH_MS = 5000  # the database summary; live parts come from the hub


class StatCard(QFrame):
    def __init__(self, label: str, parent=None):
        super().__init__(parent)
        self.setObjectName("statCard")
        layout = QVBoxLayout(self)
        self.value = QLabel("–")
        self.value.setObjectName("statValue")
        caption = QLabel(label)
        caption.setObjectName("statLabel")
        layout.addWidget(self.value)
        layout.addWidget(caption)

    def set(self, value) -> None:
        self.value.setText(str(value))


class DashboardPage(QWidget):
    title = "Dashboard"

    def __init__(self, services, runner, hub, parent=None):
        super().__init__(parent)
        self.setObjectName("page")
        self.services, self.runner, self.hub = services, runner, hub
        self._loading = False
        layout = QVBoxLayout(self)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        layout.addWidget(heading)

        grid = QGridLayout()
        self.cards = {}
        stats = [
            ("queued", "Queued"),
            ("active", "Running"),
            ("completed", "Completed"),
            ("failed", "Failed"),
            ("nodes_online", "Nodes online"),
            ("nodes_busy", "Nodes busy"),
            ("hour_completed", "Finished in the last hour"),
            ("hour_failed", "Failed in the last hour"),
        ]
        for index, (key, label) in enumerate(stats):
            self.cards[key] = StatCard(label)
            grid.addWidget(self.cards[key], index // 4, index % 4)
        layout.addLayout(grid)

        recent_title = QLabel("Recent jobs")
        recent_title.setObjectName("statLabel")
        layout.addWidget(recent_title)
        self.recent = QTableWidget(0, 5)  # ten rows of text: a widget table is the simple thing here
        self.recent.setHorizontalHeaderLabels(["File", "Status", "Progress", "Node", "Created"])
        header = self.recent.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.recent.setWordWrap(False)
        self.recent.verticalHeader().setVisible(False)
        self.recent.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.recent.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        layout.addWidget(self.recent, 1)
        self.error = QLabel()
        self.error.setObjectName("notice")
        self.error.hide()
        layout.addWidget(self.error)

        hub.nodes_updated.connect(self._show_nodes)
        hub.job_event.connect(self._on_event)
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self._show_nodes(hub.nodes)
        self.refresh()

    def refresh(self) -> None:
        if self._loading:
            return
        self._loading = True
        self.runner.run(lambda: self.services.farm.summary(recent=RECENT_ROWS), self._show, self._failed)

    def _on_event(self, event) -> None:
        if event.event in ("completed", "failed", "active", "added", "removed"):
            QTimer.singleShot(300, self.refresh)  # coalesces a burst into one query

    def _show(self, summary: FarmSummary) -> None:
        self._loading = False
        self.error.hide()
        counts = summary.by_status
        for key in ("queued", "active", "completed", "failed"):
            self.cards[key].set(counts.get(key, 0))
        self.cards["hour_completed"].set(summary.last_hour.get("completed", 0))
        self.cards["hour_failed"].set(summary.last_hour.get("failed", 0))
        rows = summary.recent
        self.recent.setRowCount(len(rows))
        for row, job in enumerate(rows):
            created = (isoformat(job.created_at) or "")[:19].replace("T", " ")
            values = [job.video.name, job.status, f"{job.progress:.0f}%", job.node or "", created]
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                if col == 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.recent.setItem(row, col, item)

    def _failed(self, exc: Exception) -> None:
        self._loading = False
        self.error.setText(f"Could not read the job database: {exc}")
        self.error.show()

    def _show_nodes(self, nodes: list) -> None:
        online = [n for n in nodes if n.status != "offline"]
        self.cards["nodes_online"].set(len(online))
        self.cards["nodes_busy"].set(sum(1 for n in online if n.status == "busy"))
