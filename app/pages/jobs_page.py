"""Jobs: every job, paged from the database, kept live by the job-event stream.

Loading: the first page and the count come back from the runner together; further pages load when
the view scrolls to the end (``fetchMore``). Sorting and filters re-query the database.

Live updates are pushed by ``hub.job_event``: a ``progress`` event moves one bar in place (no
query); an event that changes a job's state queues its id, and a short timer re-reads the queued
ids in one background call, so a burst from many nodes costs one task. After the event stream
reconnects, the view is reloaded (events may have been missed).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import shiboken6
from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeySequence, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QFrame, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QMenu, QStyle, QTableView, QToolBar, QToolButton, QVBoxLayout,
                               QWidget)

from app.dialogs.job_details import JobDetailsDialog
from app.models.jobs_model import (BAR_ENABLED_ROLE, COL_CREATED, COL_FILE, COL_FINISHED, COL_FORMAT, COL_JOB,
                                   COL_NODE, COL_PROGRESS, COL_STATUS, PROGRESS_ROLE, SORT_FIELDS, JobQuery,
                                   JobsModel, short_id)
from app.widgets.progress_delegate import ProgressDelegate
from farm.services.db import repo
from farm.domain.object_keys import sanitize_name

PAGE_SIZE = 200
TEXT_DEBOUNCE_MS = 300
REFETCH_DELAY_MS = 100  # events for the same jobs within this window cost one database read
INFO_MESSAGE_MS = 10_000
# Events after which a job's row may differ from the database's (progress is handled apart).
STATE_EVENTS = frozenset({"added", "waiting", "active", "completed", "failed", "removed", "delayed", "stalled"})
STATUS_CHOICES = ("All", "queued", "active", "completed", "failed", "cancelled")
DATE_CHOICES = ("Any time", "Last hour", "Today", "Last 7 days")
# Fits 1100 px with room for the error (the last column takes what is left).
COLUMN_WIDTHS = {COL_JOB: 78, COL_FILE: 200, COL_STATUS: 82, COL_PROGRESS: 104, COL_FORMAT: 104,
                 COL_NODE: 100, COL_CREATED: 116, COL_FINISHED: 116}


def created_since(choice: str, now: datetime | None = None) -> datetime | None:
    """The start of a date filter choice, in UTC ("Today" starts at local midnight)."""
    now = now or datetime.now(timezone.utc)
    if choice == "Last hour":
        return now - timedelta(hours=1)
    if choice == "Today":
        local = now.astimezone()
        return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    if choice == "Last 7 days":
        return now - timedelta(days=7)
    return None


def _job_row(job, video) -> dict:
    """A table row: the job's JSON without its log tail (up to 16 kB each, read when asked for)."""
    row = repo.job_to_dict(job, video)
    row.pop("log_tail", None)
    return row


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


class _JobsTable(QTableView):
    """The table, with a line of text in its empty viewport (no jobs, or none match)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.placeholder = ""

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.placeholder and self.model() is not None and self.model().rowCount() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.viewport().rect().adjusted(16, 16, -16, -16),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
                             self.placeholder)


class JobsPage(QWidget):
    title = "Jobs"
    message_shown = Signal(str, bool)  # text, is_error (the window may mirror it in its status bar)

    def __init__(self, services, runner, hub, parent=None):
        super().__init__(parent)
        self.setObjectName("page")
        self.services, self.runner, self.hub = services, runner, hub
        self.model = JobsModel(self)
        self.model.fetch_requested.connect(self._fetch_page)
        self._loading = False  # a first page is on its way
        self._loaded_once = False
        self._load_error: str | None = None
        self._pending_ids: set[str] = set()  # jobs to re-read at the next refetch tick
        self._refetching = False
        self._touched_while_loading: dict[str, float | None] = {}  # id -> latest progress seen
        self._probed: set[str] = set()  # running jobs without a row, read once per load to place them
        self._wanted: str | None = None  # select_job's target, until it is loaded and selected
        self.details_dialog: JobDetailsDialog | None = None
        self.context_menu: QMenu | None = None
        # Seams for what talks to the desktop (tests replace them; the app keeps these).
        self.open_url = QDesktopServices.openUrl
        self.ask_save_path = self._ask_save_path
        self.ask_directory = self._ask_directory

        self._build()
        self._refetch_timer = QTimer(self, singleShot=True, interval=REFETCH_DELAY_MS)
        self._refetch_timer.timeout.connect(self._refetch)
        self._text_timer = QTimer(self, singleShot=True, interval=TEXT_DEBOUNCE_MS)
        self._text_timer.timeout.connect(self.reload)
        self._message_timer = QTimer(self, singleShot=True, interval=INFO_MESSAGE_MS)
        self._message_timer.timeout.connect(self.clear_message)

        hub.job_event.connect(self._on_job_event)
        hub.events_reconnected.connect(self.reload)

    # -- building ------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        layout.addWidget(heading)

        filters = QHBoxLayout()
        self.status_filter = QComboBox()
        self.status_filter.addItems(STATUS_CHOICES)
        self.status_filter.setToolTip("Show jobs in this state only")
        self.status_filter.currentIndexChanged.connect(self.reload)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search file name or job id")
        self.search.setClearButtonEnabled(True)
        self.search.setMinimumWidth(260)
        self.search.textChanged.connect(lambda _text: self._text_timer.start())
        self.search.returnPressed.connect(self.reload)
        self.date_filter = QComboBox()
        self.date_filter.addItems(DATE_CHOICES)
        self.date_filter.setToolTip("Show jobs created since")
        self.date_filter.currentIndexChanged.connect(self.reload)
        self.count_label = QLabel("")
        self.count_label.setObjectName("jobsCount")
        filters.addWidget(QLabel("Status"))
        filters.addWidget(self.status_filter)
        filters.addSpacing(8)
        filters.addWidget(self.search, 1)
        filters.addSpacing(8)
        filters.addWidget(QLabel("Created"))
        filters.addWidget(self.date_filter)
        filters.addStretch()
        filters.addWidget(self.count_label)
        layout.addLayout(filters)

        self._build_actions()
        self.toolbar = QToolBar("Job actions")
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.act_cancel, self.act_retry, None, self.act_details, self.act_open,
                       self.act_download, self.act_copy_link, None, self.act_refresh):
            if action is None:
                self.toolbar.addSeparator()
            else:
                self.toolbar.addAction(action)
        layout.addWidget(self.toolbar)

        self.message_bar = QFrame()
        bar_layout = QHBoxLayout(self.message_bar)
        bar_layout.setContentsMargins(0, 0, 0, 0)
        self.message_label = QLabel()
        self.message_label.setTextFormat(Qt.TextFormat.PlainText)  # messages quote names from users and the queue
        self.message_label.setObjectName("notice")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.clear_message)
        bar_layout.addWidget(self.message_label, 1)
        bar_layout.addWidget(close)
        self.message_bar.hide()
        layout.addWidget(self.message_bar)

        table = self.table = _JobsTable()
        table.setModel(self.model)
        table.setItemDelegateForColumn(COL_PROGRESS, ProgressDelegate(PROGRESS_ROLE, table,
                                                                      enabled_role=BAR_ENABLED_ROLE))
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        table.setAlternatingRowColors(True)
        table.setWordWrap(False)
        table.setShowGrid(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        table.customContextMenuRequested.connect(self._show_context_menu)
        table.doubleClicked.connect(lambda _index: self.act_details.trigger())
        table.placeholder = "Loading jobs…"
        rows = table.verticalHeader()
        rows.hide()
        # Fixed row heights: the view never measures 10,000 rows.
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(max(26, table.fontMetrics().height() + 10))
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        for column, width in COLUMN_WIDTHS.items():
            header.resizeSection(column, width)
        header.setMinimumSectionSize(56)
        header.setSortIndicatorShown(True)
        header.setSortIndicator(COL_CREATED, Qt.SortOrder.DescendingOrder)
        header.setSectionsClickable(True)
        header.sortIndicatorChanged.connect(self._on_sort_changed)
        self._sort = (COL_CREATED, Qt.SortOrder.DescendingOrder)
        table.selectionModel().selectionChanged.connect(self._update_actions)
        self.model.dataChanged.connect(self._on_data_changed)
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved):
            signal.connect(self._update_count)
        self.model.modelReset.connect(self._update_actions)
        self.model.rowsRemoved.connect(self._update_actions)
        layout.addWidget(table, 1)
        self._update_actions()

    def _build_actions(self) -> None:
        style = self.style()
        icon = style.standardIcon
        pixmaps = QStyle.StandardPixmap

        def action(text, pixmap, slot, tip, shortcut=None):
            act = QAction(icon(pixmap), text, self)
            act.setToolTip(tip)
            act.triggered.connect(slot)
            if shortcut:
                act.setShortcut(QKeySequence(shortcut))
                act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(act)
            return act

        self.act_cancel = action("Cancel", pixmaps.SP_BrowserStop, self.cancel_selected,
                                 "Cancel the selected queued or running jobs", "Delete")
        self.act_retry = action("Retry", pixmaps.SP_MediaPlay, self.retry_selected,
                                "Put the selected failed or cancelled jobs back in the queue", "Ctrl+R")
        self.act_details = action("Show error and log…", pixmaps.SP_FileDialogDetailedView, self.show_details,
                                  "The job's error and the end of its FFmpeg log", "Ctrl+I")
        self.act_open = action("Open output", pixmaps.SP_DialogOpenButton, self.open_output,
                               "Download the output to the cache and open it with the default application")
        self.act_download = action("Download…", pixmaps.SP_DialogSaveButton, self.download_selected,
                                   "Save the outputs of the selected completed jobs", "Ctrl+S")
        self.act_copy_link = action("Copy link", pixmaps.SP_FileLinkIcon, self.copy_links,
                                    "Copy a link to the output (on S3 it works for one hour)", "Ctrl+Shift+C")
        self.act_refresh = action("Refresh", pixmaps.SP_BrowserReload, self.reload,
                                  "Read the list again from the database", "F5")

    # -- loading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Called when the page is shown: load once; later, live events keep the rows current."""
        if (not self._loaded_once and not self._loading) or self._load_error:
            self.reload()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._loaded_once and not self._loading:
            self.reload()

    def query(self) -> JobQuery:
        status = self.status_filter.currentText()
        column, order = self._sort
        return JobQuery(
            status=None if status == "All" else status,
            text=self.search.text().strip(),
            since=created_since(self.date_filter.currentText()),
            order_by=SORT_FIELDS[column],
            descending=order == Qt.SortOrder.DescendingOrder,
        )

    def reload(self) -> None:
        """Re-read the first page for the current filters and order (the rows stay until it lands)."""
        self._text_timer.stop()
        query = self.query()
        generation = self.model.begin_load(query)
        self._loading = True
        self._touched_while_loading = {}
        self._probed = set()
        if self.model.rowCount() == 0:
            self.table.placeholder = "Loading jobs…"
            self.table.viewport().update()
        farm_of = self._farm

        def load():
            db = farm_of().db
            rows = repo.list_jobs(db, **query.filters(), **query.ordering(), limit=PAGE_SIZE, offset=0)
            return [_job_row(job, video) for job, video in rows], repo.count_jobs(db, **query.filters())

        self._run(load, lambda result: self._loaded(generation, *result),
                  lambda exc: self._load_failed(generation, exc))

    def _loaded(self, generation: int, jobs: list[dict], total: int) -> None:
        if not self.model.set_jobs(jobs, total, generation):
            return  # a newer load is on its way
        self._loading = False
        self._loaded_once = True
        if self._load_error:
            self._load_error = None
            self.clear_message()
        self.table.placeholder = self._empty_text()
        self._update_count()
        # Events that arrived while the page was in flight may be newer than what it read.
        touched, self._touched_while_loading = self._touched_while_loading, {}
        for job_id, progress in touched.items():
            if progress is not None:
                self.model.set_progress(job_id, progress)
            self._schedule_refetch(job_id)
        self._seek_wanted()

    def _load_failed(self, generation: int, exc: Exception) -> None:
        if generation != self.model.generation:
            return
        self._loading = False
        self._load_error = _describe(exc)
        self.table.placeholder = "The jobs could not be loaded."
        self.table.viewport().update()
        self.show_message(f"Could not load the jobs: {self._load_error}. Check the database in Settings, "
                          "then press Refresh.", error=True)

    def _fetch_page(self, offset: int) -> None:
        query, generation = self.model.query, self.model.generation
        farm_of = self._farm

        def load():
            rows = repo.list_jobs(farm_of().db, **query.filters(), **query.ordering(), limit=PAGE_SIZE, offset=offset)
            return [_job_row(job, video) for job, video in rows]

        def loaded(jobs):
            if self.model.append_page(jobs, generation, PAGE_SIZE):
                self._seek_wanted()

        def failed(exc):
            self.model.fetch_failed(generation)
            if generation == self.model.generation:
                self._wanted = None
                self.show_message(f"Could not load more jobs: {_describe(exc)}. Scroll down again to retry.",
                                  error=True)

        self._run(load, loaded, failed)

    def _on_sort_changed(self, column: int, order: Qt.SortOrder) -> None:
        if column not in SORT_FIELDS:  # not a database column: keep the order we have
            header = self.table.horizontalHeader()
            header.blockSignals(True)
            header.setSortIndicator(*self._sort)
            header.blockSignals(False)
            return
        if (column, order) != self._sort:
            self._sort = (column, order)
            self.reload()

    def _empty_text(self) -> str:
        query = self.model.query
        if query.status or query.text or query.since:
            return "No jobs match these filters."
        return "No jobs yet. Add files on the Upload page and their jobs appear here."

    def _update_count(self, *_args) -> None:
        shown, total = self.model.rowCount(), self.model.total
        if not self._loaded_once:
            self.count_label.setText("")
        elif shown >= total:
            self.count_label.setText(f"{shown:,} job{'s' if shown != 1 else ''}")
        else:
            self.count_label.setText(f"Showing {shown:,} of {total:,} jobs")
        if shown == 0 and self._loaded_once:
            self.table.placeholder = self._empty_text()

    # -- live updates ------------------------------------------------------------------------
    def _on_job_event(self, event) -> None:
        job_id = event.job_id
        if not job_id:
            return
        if event.event == "progress":
            percent = event.progress
            if percent is None:
                return
            if self._loading:
                self._touched_while_loading[job_id] = percent
            if self.model.row_of(job_id) is None:
                # Its "active" may have been read before the node recorded it; read it once more,
                # so that a running job missing from an "active" filter shows up.
                if job_id not in self._probed and self.model.query.status in (None, "active"):
                    self._probed.add(job_id)
                    self._schedule_refetch(job_id)
            elif self.model.set_progress(job_id, percent):
                self._schedule_refetch(job_id)  # it started: read its node too
        elif event.event in STATE_EVENTS:
            if self._loading:
                self._touched_while_loading.setdefault(job_id, None)
            self._schedule_refetch(job_id)

    def _schedule_refetch(self, job_id: str) -> None:
        self._pending_ids.add(job_id)
        if not self._refetching and not self._refetch_timer.isActive():
            self._refetch_timer.start()

    def _refetch(self) -> None:
        if not self._pending_ids:
            return
        ids, self._pending_ids = sorted(self._pending_ids), set()
        self._refetching = True
        farm_of = self._farm

        def read():
            db = farm_of().db
            found = {}
            for job_id in ids:
                pair = repo.get_job_with_video(db, job_id)
                found[job_id] = _job_row(*pair) if pair else None
            return found

        def done(found: dict) -> None:
            self._refetching = False
            for job_id, job in found.items():
                if job is None:
                    self.model.remove_job(job_id)
                else:
                    self.model.apply_job(job)
            self._seek_wanted()
            if self._pending_ids:
                self._refetch_timer.start()

        def failed(exc: Exception) -> None:
            self._refetching = False
            self.show_message(f"Could not update {len(ids)} job(s) from the database: {_describe(exc)}. "
                              "Press Refresh to try again.", error=True)
            if self._pending_ids:
                self._refetch_timer.start()

        self._run(read, done, failed)

    # -- selecting -----------------------------------------------------------------------------
    def select_job(self, job_id: str) -> None:
        """Select the job's row and scroll to it, loading it first if needed (the tray's
        "open job" and the Upload page call this). Filters that hide it are cleared."""
        if self.model.row_of(job_id) is not None and not self._loading:
            self._select_row(self.model.row_of(job_id))
            return
        self._wanted = job_id
        farm_of = self._farm

        def read():
            pair = repo.get_job_with_video(farm_of().db, job_id)
            return _job_row(*pair) if pair else None

        def found(job):
            if self._wanted != job_id:
                return
            if job is None:
                self._wanted = None
                self.show_message(f"Job {short_id(job_id)} is not in the database any more.", error=True)
                return
            if not self.query().matches(job):
                self._clear_filters()  # reloads; the seek continues when the first page lands
                return
            if not self._loaded_once and not self._loading:
                self.reload()
                return
            if not self._loading:
                self.model.apply_job(job)  # a job made a moment ago may not have its row yet
            self._seek_wanted()

        def failed(exc):
            if self._wanted == job_id:
                self._wanted = None
            self.show_message(f"Could not find job {short_id(job_id)}: {_describe(exc)}", error=True)

        self._run(read, found, failed)

    def _seek_wanted(self) -> None:
        job_id = self._wanted
        if job_id is None or self._loading:
            return
        row = self.model.row_of(job_id)
        if row is not None:
            self._wanted = None
            self._select_row(row)
        elif self.model.canFetchMore():
            self.model.fetchMore()  # the next page may hold it; its arrival calls us again
        elif not self.model.fetching:
            self._wanted = None
            self.show_message(f"Job {short_id(job_id)} is not in this list.", error=True)

    def _select_row(self, row: int) -> None:
        index = self.model.index(row, COL_FILE)
        self.table.selectionModel().setCurrentIndex(
            index, self.table.selectionModel().SelectionFlag.ClearAndSelect
            | self.table.selectionModel().SelectionFlag.Rows)
        self.table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def _clear_filters(self) -> None:
        for widget in (self.status_filter, self.search, self.date_filter):
            widget.blockSignals(True)
        self.status_filter.setCurrentIndex(0)
        self.search.clear()
        self.date_filter.setCurrentIndex(0)
        for widget in (self.status_filter, self.search, self.date_filter):
            widget.blockSignals(False)
        self.reload()

    def selected_jobs(self) -> list[dict]:
        rows = sorted(index.row() for index in self.table.selectionModel().selectedRows())
        return [self.model.job(row) for row in rows if row < self.model.rowCount()]

    # -- actions ---------------------------------------------------------------------------------
    def _on_data_changed(self, top_left: QModelIndex, bottom_right: QModelIndex, _roles=()) -> None:
        # Only a status change can change what applies; progress ticks must stay cheap.
        if top_left.column() <= COL_STATUS <= bottom_right.column():
            selection = self.table.selectionModel()
            if any(selection.isRowSelected(row, QModelIndex())
                   for row in range(top_left.row(), bottom_right.row() + 1)):
                self._update_actions()

    def _update_actions(self, *_args) -> None:
        jobs = self.selected_jobs()
        finished = [job for job in jobs if _has_output(job)]
        self.act_cancel.setEnabled(any(job["status"] in ("queued", "active") for job in jobs))
        self.act_retry.setEnabled(any(job["status"] in ("failed", "cancelled") for job in jobs))
        self.act_details.setEnabled(len(jobs) == 1)
        self.act_open.setEnabled(len(jobs) == 1 and bool(finished))
        self.act_download.setEnabled(bool(finished))
        self.act_copy_link.setEnabled(bool(finished))

    def _show_context_menu(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if index.isValid() and not self.table.selectionModel().isRowSelected(index.row(), QModelIndex()):
            self._select_row(index.row())
        self._update_actions()
        menu = QMenu(self)
        for action in (self.act_cancel, self.act_retry, None, self.act_details, self.act_open,
                       self.act_download, self.act_copy_link):
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
        if self.context_menu is not None:
            self.context_menu.deleteLater()
        self.context_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def cancel_selected(self) -> None:
        ids = [job["id"] for job in self.selected_jobs() if job["status"] in ("queued", "active")]
        self._act_on(ids, "cancel", lambda farm, job_id: farm.cancel(job_id), {
            "removed": "Job {id} cancelled",
            "absent": "Job {id} cancelled",
            "cancelled": "Job {id} cancelled; its node stopped FFmpeg",
            "requested": "Cancelling job {id}: its node is stopping FFmpeg",
        })

    def retry_selected(self) -> None:
        ids = [job["id"] for job in self.selected_jobs() if job["status"] in ("failed", "cancelled")]
        self._act_on(ids, "retry", lambda farm, job_id: farm.retry(job_id), {
            "retried": "Job {id} requeued",
            "requeued": "Job {id} requeued",
        })

    def _act_on(self, ids: list[str], verb: str, call, messages: dict[str, str]) -> None:
        if not ids:
            return
        farm_of = self._farm

        def work():
            farm = farm_of()
            results = []
            for job_id in ids:
                try:
                    results.append((job_id, call(farm, job_id), None))
                except Exception as exc:  # reported per job: one failure must not hide the others
                    results.append((job_id, None, _describe(exc)))
            return results

        def done(results):
            lines = []
            for job_id, outcome, error in results:
                if error is not None:
                    lines.append(f"Could not {verb} job {short_id(job_id)}: {error}")
                else:
                    lines.append(messages.get(outcome, "Job {id}: " + str(outcome)).format(id=short_id(job_id)))
                self._schedule_refetch(job_id)
            self.show_message("\n".join(lines), error=any(error for _, _, error in results))

        self._run(work, done, lambda exc: self.show_message(f"Could not {verb}: {_describe(exc)}", error=True))

    def show_details(self) -> None:
        jobs = self.selected_jobs()
        if len(jobs) != 1:
            return
        job_id = jobs[0]["id"]
        farm_of = self._farm

        def opened(job):
            if self.details_dialog is not None:
                self.details_dialog.close()
                self.details_dialog.deleteLater()
            self.details_dialog = JobDetailsDialog(job, self)
            self.details_dialog.show()

        self._run(lambda: farm_of().show(job_id), opened,
                  lambda exc: self.show_message(f"Could not read job {short_id(job_id)}: {_describe(exc)}",
                                                error=True))

    def open_output(self) -> None:
        jobs = [job for job in self.selected_jobs() if _has_output(job)]
        if len(jobs) != 1:
            return
        job = jobs[0]
        output = job["output"]
        # Rows are data (any producer may write them): an id or key never chooses where a file goes.
        name = sanitize_name(output["key"].rsplit("/", 1)[-1])
        dest = self.services.settings.data_dir / "cache" / sanitize_name(job["id"]) / name
        farm_of = self._farm

        def fetch() -> Path:
            if not (dest.is_file() and dest.stat().st_size == output.get("size")):
                dest.parent.mkdir(parents=True, exist_ok=True)
                farm_of().download(job["id"], dest)
            return dest

        def fetched(path: Path) -> None:
            if self.open_url(QUrl.fromLocalFile(str(path))):
                self.show_message(f"Opened the output of job {short_id(job['id'])} ({path.name})")
            else:
                self.show_message(f"The output of job {short_id(job['id'])} is at {path}, but no application "
                                  "opened it; open it from your file manager.", error=True)

        self.show_message(f"Downloading the output of job {short_id(job['id'])}…", sticky=True)
        self._run(fetch, fetched, lambda exc: self.show_message(
            f"Could not open the output of job {short_id(job['id'])}: {_describe(exc)}", error=True))

    def download_selected(self) -> None:
        jobs = [job for job in self.selected_jobs() if _has_output(job)]
        if not jobs:
            return
        if len(jobs) == 1:
            name = jobs[0]["output"]["key"].rsplit("/", 1)[-1]
            target = self.ask_save_path(name)
            if not target:
                return
            targets = [(jobs[0]["id"], Path(target))]
        else:
            folder = self.ask_directory()
            if not folder:
                return
            targets = [(job["id"], Path(folder)) for job in jobs]
        farm_of = self._farm

        def work():
            farm = farm_of()
            results = []
            for job_id, dest in targets:
                try:
                    results.append((job_id, farm.download(job_id, dest), None))
                except Exception as exc:
                    results.append((job_id, None, _describe(exc)))
            return results

        def done(results):
            lines = [f"Saved the output of job {short_id(job_id)} to {path}" if error is None
                     else f"Could not download job {short_id(job_id)}: {error}" for job_id, path, error in results]
            self.show_message("\n".join(lines), error=any(error for *_, error in results))

        self.show_message(f"Downloading {len(targets)} output(s)…", sticky=True)
        self._run(work, done, lambda exc: self.show_message(f"Could not download: {_describe(exc)}", error=True))

    def copy_links(self) -> None:
        jobs = [job for job in self.selected_jobs() if _has_output(job)]
        if not jobs:
            return
        keys = [job["output"]["key"] for job in jobs]
        farm_of = self._farm

        def copied(urls: list[str]) -> None:
            QGuiApplication.clipboard().setText("\n".join(urls))
            what = f"job {short_id(jobs[0]['id'])}" if len(jobs) == 1 else f"{len(jobs)} jobs"
            self.show_message(f"Copied the link to the output of {what} to the clipboard")

        self._run(lambda: [farm_of().storage.presigned_url(key) for key in keys], copied,
                  lambda exc: self.show_message(f"Could not make a link: {_describe(exc)}. Check the storage "
                                                "settings.", error=True))

    def _ask_save_path(self, suggested: str) -> str:
        path, _filter = QFileDialog.getSaveFileName(self, "Save the output", str(Path.home() / suggested))
        return path

    def _ask_directory(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Save the outputs into", str(Path.home()))

    # -- the message line ---------------------------------------------------------------------
    def show_message(self, text: str, *, error: bool = False, sticky: bool = False) -> None:
        """Say what happened under the toolbar; errors and ``sticky`` notes stay until replaced."""
        self.message_label.setText(text)
        self.message_label.setProperty("error", error)
        self.message_label.setStyleSheet(
            "QLabel#notice { background: #fdecea; border: 1px solid #f1b7b1; border-radius: 6px;"
            " padding: 6px 10px; color: #8a1c12; }" if error else "")
        self.message_bar.show()
        if error or sticky:
            self._message_timer.stop()
        else:
            self._message_timer.start()
        self.message_shown.emit(text, error)

    def clear_message(self) -> None:
        self.message_label.clear()
        self.message_bar.hide()

    @property
    def message(self) -> str:
        return self.message_label.text() if self.message_bar.isVisibleTo(self) else ""

    # -- plumbing --------------------------------------------------------------------------------
    def _farm(self):
        """The farm client at call time (Settings may replace it); read on the pool thread."""
        return self.services.farm

    def _run(self, fn, on_done, on_error) -> None:
        """``runner.run``, with callbacks that do nothing once this page is gone."""

        def alive(callback):
            def call(value):
                if shiboken6.isValid(self):
                    callback(value)
            return call

        self.runner.run(fn, alive(on_done), alive(on_error))


def _has_output(job: dict) -> bool:
    return job["status"] == "completed" and bool((job.get("output") or {}).get("key"))
