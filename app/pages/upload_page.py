"""Upload: drop files and folders, see what each one is, pick the output, upload several at once.

The file list is a ``QListView`` on ``UploadListModel`` with ``UploadDelegate`` painting each row
(thumbnail, name, duration · resolution · codecs, status, progress bar, Cancel button), so a drop of
a few thousand files costs a few thousand small records, not a few thousand widgets. Probing,
thumbnails and uploads run in the background runner (``app.intake`` and ``app.uploads``); this
module only shows their results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QEvent, QModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QFont, QImage, QKeySequence, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionButton,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app.hub import FarmHub
from app.runner import BackgroundRunner
from app.services import AppServices
from app.uploads import UploadController
from app.widgets.drop_zone import DropZone, accepts_drag, local_paths
from app.widgets.output_form import OutputForm
from app import intake
from farm.client import CheckedFile

log = logging.getLogger(__name__)

THUMB_SIZE = QSize(112, 63)
VIDEO_FILTER = "Videos ({});;All files (*)".format(" ".join(f"*{ext}" for ext in sorted(intake.VIDEO_EXTENSIONS)))

# Row states, in the order a file goes through them.
CHECKING, REFUSED, READY, WAITING, UPLOADING, CREATING, SUBMITTED, CANCELLED, FAILED = (
    "checking", "refused", "ready", "waiting", "uploading", "creating", "submitted", "cancelled", "failed")
ACTIVE = (WAITING, UPLOADING, CREATING)
FINISHED = (REFUSED, SUBMITTED, CANCELLED)


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
            speed = f" · {intake.format_rate(self.speed)}" if self.speed > 0 else ""
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
        return {REFUSED: "warning", FAILED: "warning", SUBMITTED: "ok",
                CANCELLED: "muted", CHECKING: "muted", WAITING: "muted"}.get(self.state, "normal")


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

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
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


class UploadDelegate(QStyledItemDelegate):
    """Paints a row; a click on its Cancel button emits ``cancel_clicked(key)``."""

    cancel_clicked = Signal(int)
    ROW_HEIGHT = THUMB_SIZE.height() + 14
    STATUS_SHARE = 0.42  # of the row's width, at least STATUS_MIN_WIDTH: refusal reasons are long
    STATUS_MIN_WIDTH = 260
    BUTTON_SIZE = QSize(80, 28)

    def sizeHint(self, option, index) -> QSize:
        return QSize(600, self.ROW_HEIGHT)

    def cancel_rect(self, rect: QRect) -> QRect:
        size = self.BUTTON_SIZE
        return QRect(rect.right() - size.width() - 10, rect.center().y() - size.height() // 2,
                     size.width(), size.height())

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        model = UploadListModel
        widget = option.widget
        style = widget.style() if widget else QApplication.style()
        painter.save()
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, widget)
        rect = option.rect
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        dark = palette.color(QPalette.ColorRole.Base).lightness() < 128

        thumb = QRect(rect.left() + 8, rect.top() + 7, THUMB_SIZE.width(), THUMB_SIZE.height())
        self._paint_thumbnail(painter, thumb, index.data(model.ThumbnailRole), index.data(model.StateRole), palette)

        cancellable = bool(index.data(model.CancellableRole))
        right = self.cancel_rect(rect).left() - 12
        width = max(self.STATUS_MIN_WIDTH, int(rect.width() * self.STATUS_SHARE))
        status = QRect(right - width, rect.top() + 4, width, rect.height() - 8)
        text = QRect(thumb.right() + 12, rect.top() + 8, status.left() - thumb.right() - 24, rect.height() - 16)

        name_font = QFont(option.font)
        name_font.setBold(True)
        painter.setFont(name_font)
        painter.setPen(palette.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text))
        top = QRect(text.left(), text.top() + 4, text.width(), text.height() // 2 - 2)
        painter.drawText(top, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(index.data(), Qt.TextElideMode.ElideMiddle, top.width()))
        painter.setFont(option.font)
        if not selected:
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        bottom = QRect(text.left(), text.center().y() + 2, text.width(), text.height() // 2 - 4)
        painter.drawText(bottom, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         painter.fontMetrics().elidedText(index.data(model.DetailsRole), Qt.TextElideMode.ElideRight,
                                                          bottom.width()))

        percent = index.data(model.ProgressRole)
        tone = index.data(model.ToneRole)
        color = _tone_color(tone, dark) or palette.color(
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        status_font = QFont(option.font)
        status_font.setBold(tone in ("warning", "ok"))
        painter.setFont(status_font)
        painter.setPen(color)
        if percent >= 0:
            line = QRect(status.left(), status.top() + 2, status.width(), status.height() // 2 - 2)
            bar = QStyleOptionProgressBar()
            bar.rect = QRect(status.left(), status.center().y() + 3, status.width(), 16)
            bar.minimum, bar.maximum, bar.progress = 0, 100, percent
            bar.textVisible = False
            bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
            bar.palette = palette
            style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            status_text = painter.fontMetrics().elidedText(index.data(model.StatusRole), Qt.TextElideMode.ElideRight,
                                                           line.width())
        else:
            line = status
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter | Qt.TextFlag.TextWordWrap
            status_text = _elide_lines(painter, index.data(model.StatusRole), line, 3)
        painter.drawText(line, flags, status_text)

        if cancellable:
            button = QStyleOptionButton()
            button.rect = self.cancel_rect(rect)
            button.text = "Cancel"
            button.icon = style.standardIcon(QStyle.StandardPixmap.SP_DialogCancelButton)
            button.iconSize = QSize(14, 14)
            button.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Raised
            button.palette = palette
            style.drawControl(QStyle.ControlElement.CE_PushButton, button, painter, widget)
        painter.restore()

    def _paint_thumbnail(self, painter: QPainter, rect: QRect, image: QImage | None, state: str,
                         palette: QPalette) -> None:
        painter.fillRect(rect, QColor(24, 24, 24))
        if image is not None and not image.isNull():
            scaled = image.scaled(rect.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                  Qt.TransformationMode.SmoothTransformation)
            x = rect.left() + (rect.width() - scaled.width()) // 2
            y = rect.top() + (rect.height() - scaled.height()) // 2
            painter.drawImage(x, y, scaled)
            return
        words = {CHECKING: "…", REFUSED: "not a video"}.get(state, "no preview")
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, words)

    def editorEvent(self, event, model, option, index) -> bool:
        if (event.type() == QEvent.Type.MouseButtonRelease and event.button() == Qt.MouseButton.LeftButton
                and index.data(UploadListModel.CancellableRole)
                and self.cancel_rect(option.rect).contains(event.position().toPoint())):
            self.cancel_clicked.emit(index.data(UploadListModel.KeyRole))
            return True
        return super().editorEvent(event, model, option, index)


def _tone_color(tone: str, dark: bool) -> QColor | None:
    colors = {"warning": ("#b3261e", "#ff8a80"), "ok": ("#1b6e20", "#81c784"), "muted": ("#5f6368", "#a0a4a8")}
    pair = colors.get(tone)
    return QColor(pair[1] if dark else pair[0]) if pair else None


def _elide_lines(painter: QPainter, text: str, rect: QRect, lines: int) -> str:
    """Word-wrapped text that fits ``lines`` lines, with an ellipsis when it does not (tooltip has it all)."""
    metrics = painter.fontMetrics()
    if metrics.boundingRect(rect, Qt.TextFlag.TextWordWrap, text).height() <= metrics.lineSpacing() * lines:
        return text
    words, kept = text.split(), ""
    for word in words:
        trial = f"{kept} {word}".strip()
        if metrics.boundingRect(rect, Qt.TextFlag.TextWordWrap, trial + "…").height() > metrics.lineSpacing() * lines:
            break
        kept = trial
    return kept + "…"


class UploadListView(QListView):
    """The file list, with a hint in place of an empty list."""

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.model() is not None and self.model().rowCount() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "No files yet: drop videos or folders here, or click “Add files…”.")


class UploadPage(QWidget):
    title = "Upload"
    job_submitted = Signal(dict)  # the job's JSON, once its upload finished and it was enqueued
    job_activated = Signal(str)  # a job id: the user double-clicked a submitted row

    def __init__(self, services: AppServices, runner: BackgroundRunner, hub: FarmHub, parent=None):
        super().__init__(parent)
        self.services = services
        self.runner = runner
        self.hub = hub
        self.setAcceptDrops(True)
        self._last_dir = str(Path.home())

        self.drop_zone = DropZone()
        self.form = OutputForm(services, runner)
        self.uploads = UploadController(services, runner, max_concurrent=3, parent=self)
        self.model = UploadListModel(self)
        self.delegate = UploadDelegate(self)
        self.view = UploadListView()
        self.view.setModel(self.model)
        self.view.setItemDelegate(self.delegate)
        self.view.setUniformItemSizes(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)

        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()
        self.summary = QLabel("No files")
        self.clear_button = QPushButton("Clear finished")
        self.clear_button.setToolTip("Remove uploaded, cancelled and refused files from the list")
        self.cancel_all_button = QPushButton("Cancel all")
        self.upload_button = QPushButton("Upload")
        self.upload_button.setDefault(True)
        self.upload_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_ArrowUp))
        self.upload_button.setMinimumWidth(150)

        top = QHBoxLayout()
        top.addWidget(self.drop_zone, 3)
        top.addWidget(self.form, 2)
        bottom = QHBoxLayout()
        bottom.addWidget(self.summary, 1)
        bottom.addWidget(self.clear_button)
        bottom.addWidget(self.cancel_all_button)
        bottom.addWidget(self.upload_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.notice)
        layout.addWidget(self.view, 1)
        layout.addLayout(bottom)

        self.drop_zone.paths_dropped.connect(self.add_paths)
        self.drop_zone.add_files_clicked.connect(self.choose_files)
        self.drop_zone.add_folder_clicked.connect(self.choose_folder)
        self.upload_button.clicked.connect(self.start_uploads)
        self.clear_button.clicked.connect(self.clear_finished)
        self.cancel_all_button.clicked.connect(self.cancel_all)
        self.delegate.cancel_clicked.connect(self.cancel_upload)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.doubleClicked.connect(self._activated)
        self.uploads.started.connect(lambda key: self.model.update(key, state=UPLOADING, done=0, speed=0.0))
        self.uploads.progress.connect(self._progress)
        self.uploads.submitted.connect(self._submitted)
        self.uploads.cancelled.connect(lambda key, note: self._finished(key, CANCELLED, note))
        self.uploads.failed.connect(lambda key, reason: self._finished(key, FAILED, reason))
        self.model.rowsInserted.connect(self._update_summary)
        self.model.rowsRemoved.connect(self._update_summary)
        self.model.dataChanged.connect(self._update_summary)
        self._update_summary()

    # -- public: what the window calls --------------------------------------------------------
    def refresh(self) -> None:
        self.form.reload_presets()

    def add_paths(self, paths: list[Path]) -> None:
        """List files and folders (folders expand to the videos inside), then probe each file."""
        paths = [Path(p) for p in paths]
        if not paths:
            return
        self.show_notice("")
        self.runner.run(lambda: intake.expand_paths(paths), self._expanded,
                        lambda exc: self.show_notice(f"Could not read what was dropped: {exc}", error=True))

    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add video files", self._last_dir, VIDEO_FILTER)
        if files:
            self._last_dir = str(Path(files[0]).parent)
            self.add_paths([Path(f) for f in files])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add the videos in a folder", self._last_dir)
        if folder:
            self._last_dir = folder
            self.add_paths([Path(folder)])

    def has_active_uploads(self) -> bool:
        return self.uploads.active_count > 0

    def cancel_all(self) -> None:
        self.uploads.cancel_all()

    # -- drops on the page itself ---------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        accepts_drag(event)

    def dragMoveEvent(self, event) -> None:
        accepts_drag(event)

    def dropEvent(self, event: QDropEvent) -> None:
        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.add_paths(paths)
        else:
            event.ignore()

    # -- probing -------------------------------------------------------------------------------
    def _expanded(self, expanded: intake.Expanded) -> None:
        listed = {row.path.absolute() for row in self.model.rows if row.state not in FINISHED}
        again = [path.name for path in expanded.files if path.absolute() in listed]
        notes = list(expanded.notes)
        if again:
            notes.append(f"Already in the list: {', '.join(again[:5])}{' …' if len(again) > 5 else ''}")
        self.show_notice(" · ".join(notes))
        for path in expanded.files:
            if path.absolute() not in listed:
                row = self.model.add(path)
                self.runner.run(lambda p=path: _inspect(p), lambda result, k=row.key: self._inspected(k, result),
                                lambda exc, k=row.key: self._finished(k, FAILED, f"could not check the file: {exc}"))

    def _inspected(self, key: int, result) -> None:
        outcome, thumb, thumb_error = result
        if isinstance(outcome, intake.Refused):
            self.model.update(key, state=REFUSED, reason=outcome.reason)
            return
        image = None
        if thumb is not None:
            width, height, rgb = thumb
            image = QImage(rgb, width, height, width * 3, QImage.Format.Format_RGB888).copy()
        details = intake.describe(outcome.info)
        if thumb_error:
            details += f" · no preview: {thumb_error}"
        self.model.update(key, state=READY, checked=outcome, thumbnail=image, details=details)

    # -- uploading -----------------------------------------------------------------------------
    def start_uploads(self) -> None:
        ready = self.model.in_state(READY)
        if not ready:
            return
        config = self.form.config()
        for row in ready:
            self.model.update(row.key, state=WAITING, reason="", done=0, total=row.checked.info.size)
            self.uploads.start(row.key, row.checked, config)

    def cancel_upload(self, key: int) -> None:
        self.uploads.cancel(key)

    def _progress(self, key: int, done: int, total: int, speed: float) -> None:
        self.model.update(key, state=CREATING if done >= total else UPLOADING, done=done, total=total, speed=speed)

    def _submitted(self, key: int, job: dict) -> None:
        row = self.model.update(key, state=SUBMITTED, job_id=job["id"], done=1, total=1)
        if row is not None:
            self.job_submitted.emit(job)

    def _finished(self, key: int, state: str, reason: str) -> None:
        self.model.update(key, state=state, reason=reason)

    # -- the list --------------------------------------------------------------------------------
    def clear_finished(self) -> None:
        self.model.remove({row.key for row in self.model.in_state(*FINISHED)})

    def _selected_rows(self) -> list[UploadRow]:
        return [self.model.rows[index.row()] for index in self.view.selectionModel().selectedIndexes()]

    def _remove_selected(self) -> None:
        self.model.remove({row.key for row in self._selected_rows() if row.state not in ACTIVE + (CHECKING,)})

    def _retry_selected(self) -> None:
        for row in self._selected_rows():
            if row.state in (FAILED, CANCELLED) and row.checked is not None:
                self.model.update(row.key, state=READY, reason="", done=0, speed=0.0)

    def keyPressEvent(self, event) -> None:
        if event.matches(QKeySequence.StandardKey.Delete) or event.key() == Qt.Key.Key_Backspace:
            self._remove_selected()
        else:
            super().keyPressEvent(event)

    def _context_menu(self, pos) -> None:
        rows = self._selected_rows()
        if not rows:
            return
        menu = QMenu(self)
        cancel = menu.addAction("Cancel upload", lambda: [self.cancel_upload(r.key) for r in rows])
        cancel.setEnabled(any(r.state in (WAITING, UPLOADING) for r in rows))
        again = menu.addAction("Upload again", self._retry_selected)
        again.setEnabled(any(r.state in (FAILED, CANCELLED) and r.checked for r in rows))
        remove = menu.addAction("Remove from list", self._remove_selected)
        remove.setEnabled(any(r.state not in ACTIVE + (CHECKING,) for r in rows))
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def _activated(self, index: QModelIndex) -> None:
        row = self.model.rows[index.row()]
        if row.job_id:
            self.job_activated.emit(row.job_id)

    def _update_summary(self, *_args) -> None:
        rows = self.model.rows
        counts = {state: 0 for state in (CHECKING, REFUSED, READY, WAITING, UPLOADING, CREATING, SUBMITTED,
                                         CANCELLED, FAILED)}
        for row in rows:
            counts[row.state] += 1
        parts = [f"{len(rows)} file{'s' if len(rows) != 1 else ''}"] if rows else ["No files"]
        for state, word in ((CHECKING, "checking"), (READY, "ready"), (REFUSED, "refused"),
                            (WAITING, "waiting"), (UPLOADING, "uploading"), (SUBMITTED, "queued"),
                            (FAILED, "failed"), (CANCELLED, "cancelled")):
            if counts[state]:
                parts.append(f"{counts[state]} {word}")
        self.summary.setText(" · ".join(parts))
        ready = counts[READY]
        self.upload_button.setText(f"Upload {ready} file{'s' if ready != 1 else ''}" if ready else "Upload")
        self.upload_button.setEnabled(ready > 0)
        self.cancel_all_button.setVisible(counts[WAITING] + counts[UPLOADING] > 0)
        self.clear_button.setEnabled(any(counts[s] for s in FINISHED))

    def show_notice(self, text: str, error: bool = False) -> None:
        self.notice.setText(text)
        self.notice.setStyleSheet("color: #c62828; font-weight: bold;" if error else "")
        self.notice.setVisible(bool(text))


def _inspect(path: Path):
    """On a runner thread: probe the file, and for a video make its thumbnail (a failed one is noted)."""
    outcome = intake.check(path)
    thumb = thumb_error = None
    if isinstance(outcome, CheckedFile):
        try:
            thumb = intake.thumbnail(path, (THUMB_SIZE.width() * 2, THUMB_SIZE.height() * 2))
        except Exception as exc:  # the file is still a good input; only its picture is missing
            log.warning("no thumbnail for %s: %s", path, exc)
            thumb_error = str(exc)
    return outcome, thumb, thumb_error
