"""The Upload page's file list: one ``UploadRow`` per file, and the list model the view shows.

A row is a small record (path, state, probe result, thumbnail, upload progress), so a drop of a few
thousand files costs a few thousand records, not a few thousand widgets. ``UploadDelegate``
(``app.widgets.upload_list``) paints a row from the roles this model serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QImage

from farm.base.units import format_rate
from farm.client import CheckedFile

# Row states, in the order a file goes through them.
CHECKING, REFUSED, READY, WAITING, UPLOADING, CREATING, SUBMITTED, CANCELLED, FAILED = (
    "checking",
    "refused",
    "ready",
    "waiting",
    "uploading",
    "creating",
    "submitted",
    "cancelled",
    "failed",
)
ACTIVE = (WAITING, UPLOADING, CREATING)
FINISHED = (REFUSED, SUBMITTED, CANCELLED)

_ROOT = QModelIndex()


@dataclass
class UploadRow:
    key: int
    path: Path
    state: str = CHECKING
    checked: CheckedFile | None = None
    thumbnail: QImage | None = None
    reason: str = ""  # refusal, failure or cancel note
    done: int = 0
    total: int = 0
    speed: float = 0.0
    job_id: str = ""
    details: str = ""  # "0:02 · 320×240 · h264 / aac · 1.2 MB" once probed; the folder until then

    def status_text(self) -> str:
        if self.state == CHECKING:
            return "Checking…"
        if self.state == REFUSED:
            return f"Refused: {self.reason}"
        if self.state == READY:
            return "Ready"
        if self.state == WAITING:
            return "Waiting for a free upload slot"
        if self.state == UPLOADING:
            speed = f" · {format_rate(self.speed)}" if self.speed > 0 else ""
            return f"Uploading {self.percent()}%{speed}"
        if self.state == CREATING:
            return "Uploaded · creating the job…"
        if self.state == SUBMITTED:
            return f"Queued as job {self.job_id[:8]}"
        if self.state == CANCELLED:
            return f"Cancelled ({self.reason})" if self.reason else "Cancelled"
        return f"Failed: {self.reason}"

    def percent(self) -> int:
        return int(self.done * 100 / self.total) if self.total else 0

    def tone(self) -> str:
        return {
            REFUSED: "warning",
            FAILED: "warning",
            SUBMITTED: "ok",
            CANCELLED: "muted",
            CHECKING: "muted",
            WAITING: "muted",
        }.get(self.state, "normal")


class UploadListModel(QAbstractListModel):
    StatusRole = Qt.ItemDataRole.UserRole + 1
    DetailsRole = Qt.ItemDataRole.UserRole + 2
    ThumbnailRole = Qt.ItemDataRole.UserRole + 3
    ProgressRole = Qt.ItemDataRole.UserRole + 4  # percent while uploading, else -1
    CancellableRole = Qt.ItemDataRole.UserRole + 5
    ToneRole = Qt.ItemDataRole.UserRole + 6  # "warning", "ok", "muted", "normal"
    StateRole = Qt.ItemDataRole.UserRole + 7
    KeyRole = Qt.ItemDataRole.UserRole + 8

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[UploadRow] = []
        self._keys = count(1)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self.rows):
            return None
        row = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.path.name
        if role == self.StatusRole:
            return row.status_text()
        if role == self.DetailsRole:
            return row.details
        if role == self.ThumbnailRole:
            return row.thumbnail
        if role == self.ProgressRole:
            return row.percent() if row.state in (UPLOADING, CREATING) else -1
        if role == self.CancellableRole:
            return row.state in (WAITING, UPLOADING)
        if role == self.ToneRole:
            return row.tone()
        if role == self.StateRole:
            return row.state
        if role == self.KeyRole:
            return row.key
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{row.path}\n{row.details}\n{row.status_text()}".replace("\n\n", "\n")
        return None

    # -- changing rows ---------------------------------------------------------------------------
    def add(self, path: Path) -> UploadRow:
        row = UploadRow(next(self._keys), path, details=str(path.parent))
        self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows))
        self.rows.append(row)
        self.endInsertRows()
        return row

    def find(self, key: int) -> UploadRow | None:
        return next((row for row in self.rows if row.key == key), None)

    def update(self, key: int, **changes) -> UploadRow | None:
        for number, row in enumerate(self.rows):
            if row.key == key:
                for name, value in changes.items():
                    setattr(row, name, value)
                index = self.index(number)
                self.dataChanged.emit(index, index)
                return row
        return None

    def remove(self, keys: set[int]) -> None:
        for number in reversed(range(len(self.rows))):
            if self.rows[number].key in keys:
                self.beginRemoveRows(QModelIndex(), number, number)
                del self.rows[number]
                self.endRemoveRows()

    def in_state(self, *states: str) -> list[UploadRow]:
        return [row for row in self.rows if row.state in states]
