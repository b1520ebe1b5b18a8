"""The farm's nodes as a table model: one row per node, updated in place from the hub's poll.

The Workers page shows this model twice: as cards and in a ``QTableView``. ``set_nodes`` is
called once a second with the registry's list; rows are inserted, removed and changed in place
(never reset), so a selection or a scrolled view survives the updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

from farm.domain.nodes import NodeStatus

# Status -> badge colour; shared with the node cards.
STATUS_COLORS = {
    "idle": "#2e9e5b",
    "busy": "#2f6fdb",
    "draining": "#d9822b",
    "paused": "#a07800",
    "disk full": "#b3261e",
    "offline": "#8a8f98",
}
OFFLINE_TEXT = "#8a8f98"

NodeRole = Qt.ItemDataRole.UserRole + 1  # the row's NodeStatus
_NO_PARENT = QModelIndex()  # the root: a table's rows have no parent
SortRole = Qt.ItemDataRole.UserRole + 2  # a value that sorts (numbers for numbers)

COLUMNS = (
    ("name", "Name"),
    ("host", "Host"),
    ("status", "Status"),
    ("cpu", "CPU"),
    ("memory", "Memory"),
    ("jobs", "Running"),
    ("last_seen", "Last seen"),
    ("encoders", "Encoders"),
    ("tags", "Tags"),
    ("version", "Version"),
)
COLUMN = {key: index for index, (key, _) in enumerate(COLUMNS)}
NUMERIC = {"cpu", "memory"}


# -- text, shared with the cards (no Qt in these) ------------------------------------------------


def format_ago(seconds: float) -> str:
    """``just now``, ``5 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``."""
    seconds = max(0.0, seconds)
    if seconds < 1.5:
        return "just now"
    if seconds < 90:
        return f"{round(seconds)} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} d ago"


def short_list(items: Sequence[str], limit: int = 3) -> str:
    """``a, b, c +2 more``; ``–`` when empty."""
    if not items:
        return "–"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} +{len(items) - limit} more"


def job_label(job: dict) -> str:
    """A running job as a user knows it: its file name, or the start of its id."""
    return str(job.get("name") or f"job {str(job.get('jobId', '?'))[:8]}")


def running_text(node: NodeStatus) -> str:
    if not node.running:
        return "–"
    return "; ".join(f"{job_label(job)} {float(job.get('progress') or 0):.0f} %" for job in node.running)


def percent_text(node: NodeStatus, key: str) -> str:
    if not node.online:
        return "–"
    value = node.cpu if key == "cpu" else node.memory * 100
    return f"{value:.0f} %"


# -- the model -------------------------------------------------------------------------------------


class NodesModel(QAbstractTableModel):
    def __init__(self, parent=None, clock: Callable[[], float] = time.time):
        super().__init__(parent)
        self._nodes: list[NodeStatus] = []
        self._clock = clock
        self._icons: dict[str, QIcon] = {}

    # -- feeding --------------------------------------------------------------------------------
    def set_nodes(self, nodes: Sequence[NodeStatus]) -> None:
        """Bring the rows in line with ``nodes`` (inserting, removing and changing rows in place)."""
        known = {n.name: n for n in self._nodes}
        incoming = sorted((self._with_last_known(n, known.get(n.name)) for n in nodes), key=lambda n: n.name)
        wanted = {n.name for n in incoming}
        for row in range(len(self._nodes) - 1, -1, -1):
            if self._nodes[row].name not in wanted:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._nodes[row]
                self.endRemoveRows()
        for row, node in enumerate(incoming):
            if row < len(self._nodes) and self._nodes[row].name == node.name:
                if self._nodes[row] != node:
                    self._nodes[row] = node
                    self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
            else:
                self.beginInsertRows(QModelIndex(), row, row)
                self._nodes.insert(row, node)
                self.endInsertRows()
        self.refresh_times()

    @staticmethod
    def _with_last_known(node: NodeStatus, before: NodeStatus | None) -> NodeStatus:
        # The registry knows only an offline node's name and last beat; keep what it said before
        # (host, encoders, tags, version), so the offline row still tells which machine it is.
        if node.online or before is None:
            return node
        return replace(
            before,
            status=node.status,
            last_seen=node.last_seen or before.last_seen,
            cpu=0.0,
            memory=0.0,
            rss=0,
            running=[],
        )

    def refresh_times(self) -> None:
        """The "last seen" texts move with the clock even when no node changed."""
        if self._nodes:
            column = COLUMN["last_seen"]
            self.dataChanged.emit(
                self.index(0, column), self.index(len(self._nodes) - 1, column), [Qt.ItemDataRole.DisplayRole]
            )

    # -- reading ---------------------------------------------------------------------------------
    def nodes(self) -> list[NodeStatus]:
        return list(self._nodes)

    def node(self, row: int) -> NodeStatus:
        return self._nodes[row]

    def row_of(self, name: str) -> int:
        return next((row for row, node in enumerate(self._nodes) if node.name == name), -1)

    def node_named(self, name: str) -> NodeStatus | None:
        row = self.row_of(name)
        return self._nodes[row] if row >= 0 else None

    def last_seen_text(self, node: NodeStatus) -> str:
        if not node.last_seen:
            return "never"
        return format_ago(self._clock() - node.last_seen)

    # -- QAbstractTableModel -------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self._nodes)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][1]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._nodes):
            return None
        node = self._nodes[index.row()]
        key = COLUMNS[index.column()][0]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(node, key)
        if role == NodeRole:
            return node
        if role == SortRole:
            return self._sort_value(node, key)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node, key)
        if role == Qt.ItemDataRole.ForegroundRole:
            if key == "status":
                return QColor(STATUS_COLORS.get(node.status, OFFLINE_TEXT))
            if not node.online:
                return QColor(OFFLINE_TEXT)
            return None
        if role == Qt.ItemDataRole.DecorationRole and key == "status":
            return self._status_icon(node.status)
        if role == Qt.ItemDataRole.TextAlignmentRole and key in NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, node: NodeStatus, key: str) -> str:
        if key in NUMERIC:
            return percent_text(node, key)
        if key == "jobs":
            return running_text(node)
        if key == "last_seen":
            return self.last_seen_text(node)
        if key == "encoders":
            return short_list(node.encoders)
        if key == "tags":
            return short_list(node.tags, limit=5)
        if key == "host":
            return node.host or "–"
        if key == "version":
            return node.version or "–"
        return str(getattr(node, key))

    def _sort_value(self, node: NodeStatus, key: str) -> Any:
        if key == "cpu":
            return node.cpu if node.online else -1.0
        if key == "memory":
            return node.memory if node.online else -1.0
        if key == "last_seen":
            return node.last_seen
        if key == "jobs":
            return len(node.running)
        return self._display(node, key).lower()

    def _tooltip(self, node: NodeStatus, key: str) -> str | None:
        if key == "encoders" and node.encoders:
            return ", ".join(node.encoders)
        if key == "jobs" and node.running:
            return "\n".join(
                f"{job_label(j)} ({j.get('jobId')}): {float(j.get('progress') or 0):.0f} %" for j in node.running
            )
        if key == "status" and not node.online:
            return "No heartbeat: the node stopped, or cannot reach Redis."
        if key == "version" and node.ffmpeg_version:
            return f"FFmpeg {node.ffmpeg_version}"
        return None

    def _status_icon(self, status: str) -> QIcon:
        if status not in self._icons:
            pixmap = QPixmap(12, 12)
            pixmap.fill(Qt.GlobalColor.transparent)
            painter = QPainter(pixmap)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setBrush(QColor(STATUS_COLORS.get(status, OFFLINE_TEXT)))
            painter.setPen(Qt.PenStyle.NoPen)
            painter.drawEllipse(1, 1, 10, 10)
            painter.end()
            self._icons[status] = QIcon(pixmap)
        return self._icons[status]
