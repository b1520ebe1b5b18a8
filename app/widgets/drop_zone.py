"""The big "drop your files here" area, and the helpers that read local paths from a drag.

``local_paths(mime)`` and ``accepts_drag(event)`` are what any widget needs to take file drops, so
the main window reuses them for drops anywhere on the window.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QStyle, QVBoxLayout


def local_paths(mime: QMimeData | None) -> list[Path]:
    """The local files and folders a drag carries (URLs that are not local files are ignored)."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile() and url.toLocalFile()]


def accepts_drag(event: QDragEnterEvent | QDragMoveEvent) -> bool:
    """Accept the drag (as a copy) if it carries local paths; for ``dragEnterEvent``/``dragMoveEvent``."""
    if local_paths(event.mimeData()):
        event.setDropAction(Qt.DropAction.CopyAction)
        event.accept()
        return True
    event.ignore()
    return False


class DropZone(QFrame):
    """A framed area that takes file drops and has an "Add files…" button; it only reports paths."""

    paths_dropped = Signal(list)  # list[Path]
    add_files_clicked = Signal()
    add_folder_clicked = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("dropZone")
        self.setAcceptDrops(True)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumHeight(150)
        self.setProperty("dragActive", False)
        self.setStyleSheet(
            "#dropZone { border: 2px dashed palette(mid); border-radius: 10px; }"
            '#dropZone[dragActive="true"] { border-color: palette(highlight); background: palette(alternate-base); }'
        )

        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_DialogOpenButton).pixmap(32, 32))
        icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title = QLabel("Drop video files or folders here")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.title.setFont(font)
        hint = QLabel("Folders are searched for the videos inside them. Or:")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        muted = hint.palette()
        muted.setColor(muted.ColorRole.WindowText, muted.color(muted.ColorRole.PlaceholderText))
        hint.setPalette(muted)

        self.add_files_button = QPushButton("Add files…")
        self.add_files_button.clicked.connect(self.add_files_clicked)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self.add_folder_clicked)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.add_files_button)
        buttons.addWidget(self.add_folder_button)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(icon)
        layout.addWidget(self.title)
        layout.addWidget(hint)
        layout.addLayout(buttons)
        layout.addStretch(1)

    def _set_drag_active(self, active: bool) -> None:
        self.setProperty("dragActive", active)
        self.style().unpolish(self)
        self.style().polish(self)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        self._set_drag_active(accepts_drag(event))

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        accepts_drag(event)

    def dragLeaveEvent(self, event) -> None:
        self._set_drag_active(False)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_drag_active(False)
        paths = local_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.setDropAction(Qt.DropAction.CopyAction)
        event.accept()
        self.paths_dropped.emit(paths)
