"""Upload: drop files and folders, see what each one is, pick the output, upload several at once.

The file list is an ``UploadListView`` on ``UploadListModel`` with ``UploadDelegate`` painting each
row. Probing, thumbnails and uploads run in the background runner (``app.intake`` and
``app.uploads``); this module only shows their results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from app import intake
from app.hub import FarmHub
from app.models.upload_list_model import (
    ACTIVE,
    CANCELLED,
    CHECKING,
    CREATING,
    FAILED,
    FINISHED,
    READY,
    REFUSED,
    SUBMITTED,
    UPLOADING,
    WAITING,
    UploadListModel,
    UploadRow,
)
from app.runner import BackgroundRunner
from app.services import AppServices
from app.uploads import UploadController
from app.widgets.drop_zone import DropZone, accepts_drag, local_paths
from app.widgets.output_form import OutputForm
from app.widgets.upload_list import THUMB_SIZE, UploadDelegate, UploadListView
from farm.client import CheckedFile

log = logging.getLogger(__name__)

VIDEO_FILTER = "Videos ({});;All files (*)".format(" ".join(f"*{ext}" for ext in sorted(intake.VIDEO_EXTENSIONS)))


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
        self.runner.run(
            lambda: intake.expand_paths(paths),
            self._expanded,
            lambda exc: self.show_notice(f"Could not read what was dropped: {exc}", error=True),
        )

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
                self._inspect_in_background(self.model.add(path))

    def _inspect_in_background(self, row: UploadRow) -> None:
        key, path = row.key, row.path  # the task reads no row: the GUI thread changes them
        self.runner.run(
            lambda: _inspect(path),
            lambda result: self._inspected(key, result),
            lambda exc: self._finished(key, FAILED, f"could not check the file: {exc}"),
        )

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
            checked = row.checked
            assert checked is not None  # a row is READY once its file was checked
            self.model.update(row.key, state=WAITING, reason="", done=0, total=checked.info.size)
            self.uploads.start(row.key, checked, config)

    def cancel_upload(self, key: int) -> None:
        self.uploads.cancel(key)

    def _cancel_rows(self, rows: list[UploadRow]) -> None:
        for row in rows:
            self.cancel_upload(row.key)

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
        cancel = menu.addAction("Cancel upload", lambda: self._cancel_rows(rows))
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
        counts = {
            state: 0 for state in (CHECKING, REFUSED, READY, WAITING, UPLOADING, CREATING, SUBMITTED, CANCELLED, FAILED)
        }
        for row in rows:
            counts[row.state] += 1
        parts = [f"{len(rows)} file{'s' if len(rows) != 1 else ''}"] if rows else ["No files"]
        for state, word in (
            (CHECKING, "checking"),
            (READY, "ready"),
            (REFUSED, "refused"),
            (WAITING, "waiting"),
            (UPLOADING, "uploading"),
            (SUBMITTED, "queued"),
            (FAILED, "failed"),
            (CANCELLED, "cancelled"),
        ):
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
