"""Jobs: every job, paged from the database, kept live by the job-event stream.

The page is the view: filters, the table, the toolbar and what each action does. Which jobs the
table holds, when to read another page and which jobs to re-read after an event is decided by
``JobPages`` (``app.models.job_pages``, plain Python). Sorting and filters re-query the database;
after the event stream reconnects, the page reloads (events may have been missed).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import shiboken6
from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QStyle,
    QTableView,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from app.dialogs.job_details import JobDetailsDialog
from app.models.job_pages import JobPages, describe_error
from app.models.job_query import JobQuery, short_id
from app.models.jobs_model import (
    BAR_ENABLED_ROLE,
    COL_CREATED,
    COL_FILE,
    COL_FINISHED,
    COL_FORMAT,
    COL_JOB,
    COL_NODE,
    COL_PROGRESS,
    COL_STATUS,
    PROGRESS_ROLE,
    SORT_FIELDS,
    JobsModel,
)
from app.widgets.message_bar import MessageBar
from app.widgets.progress_delegate import ProgressDelegate
from farm.client import Farm
from farm.domain.object_keys import sanitize_name

TEXT_DEBOUNCE_MS = 300
REFETCH_DELAY_MS = 100  # events for the same jobs within this window cost one database read
INFO_MESSAGE_MS = 10_000
STATUS_CHOICES = ("All", "queued", "active", "completed", "failed", "cancelled")
DATE_CHOICES = ("Any time", "Last hour", "Today", "Last 7 days")
# Fits 1100 px with room for the error (the last column takes what is left).
COLUMN_WIDTHS = {
    COL_JOB: 78,
    COL_FILE: 200,
    COL_STATUS: 82,
    COL_PROGRESS: 104,
    COL_FORMAT: 104,
    COL_NODE: 100,
    COL_CREATED: 116,
    COL_FINISHED: 116,
}


def created_since(choice: str, now: datetime | None = None) -> datetime | None:
    """The start of a date filter choice, in UTC ("Today" starts at local midnight)."""
    now = now or datetime.now(UTC)
    if choice == "Last hour":
        return now - timedelta(hours=1)
    if choice == "Today":
        local = now.astimezone()
        return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    if choice == "Last 7 days":
        return now - timedelta(days=7)
    return None


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
            painter.drawText(
                self.viewport().rect().adjusted(16, 16, -16, -16),
                Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
                self.placeholder,
            )


class JobsPage(QWidget):
    title = "Jobs"
    message_shown = Signal(str, bool)  # text, is_error (the window may mirror it in its status bar)

    def __init__(self, services, runner, hub, parent=None):
        super().__init__(parent)
        self.setObjectName("page")
        self.services, self.runner, self.hub = services, runner, hub
        self.model = JobsModel(self)
        self._refetch_timer = QTimer(self, singleShot=True, interval=REFETCH_DELAY_MS)
        self._text_timer = QTimer(self, singleShot=True, interval=TEXT_DEBOUNCE_MS)
        self._text_timer.timeout.connect(self.reload)
        self.pages = JobPages(self.model, self, self._farm, self._run, self._refetch_timer.start)
        self.model.fetch_requested.connect(self.pages.fetch_page)
        self._refetch_timer.timeout.connect(self.pages.refetch)
        self.details_dialog: JobDetailsDialog | None = None
        self.context_menu: QMenu | None = None
        # Seams for what talks to the desktop (tests replace them; the app keeps these).
        self.open_url = QDesktopServices.openUrl
        self.ask_save_path = self._ask_save_path
        self.ask_directory = self._ask_directory

        self._build()
        hub.job_event.connect(self.pages.on_job_event)
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
        _add_actions(self.toolbar, (*self._job_actions(), None, self.act_refresh))
        layout.addWidget(self.toolbar)

        self.message_bar = MessageBar(timeout_ms=INFO_MESSAGE_MS)
        self.message_bar.shown.connect(self.message_shown)
        layout.addWidget(self.message_bar)

        table = self.table = _JobsTable()
        table.setModel(self.model)
        table.setItemDelegateForColumn(
            COL_PROGRESS, ProgressDelegate(PROGRESS_ROLE, table, enabled_role=BAR_ENABLED_ROLE)
        )
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

    def _job_actions(self) -> tuple[QAction | None, ...]:
        """What can be done to the selected jobs, in the toolbar and the context menu (None: a separator)."""
        return (
            self.act_cancel,
            self.act_retry,
            None,
            self.act_details,
            self.act_open,
            self.act_download,
            self.act_copy_link,
        )

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

        self.act_cancel = action(
            "Cancel",
            pixmaps.SP_BrowserStop,
            self.cancel_selected,
            "Cancel the selected queued or running jobs",
            "Delete",
        )
        self.act_retry = action(
            "Retry",
            pixmaps.SP_MediaPlay,
            self.retry_selected,
            "Put the selected failed or cancelled jobs back in the queue",
            "Ctrl+R",
        )
        self.act_details = action(
            "Show error and log…",
            pixmaps.SP_FileDialogDetailedView,
            self.show_details,
            "The job's error and the end of its FFmpeg log",
            "Ctrl+I",
        )
        self.act_open = action(
            "Open output",
            pixmaps.SP_DialogOpenButton,
            self.open_output,
            "Download the output to the cache and open it with the default application",
        )
        self.act_download = action(
            "Download…",
            pixmaps.SP_DialogSaveButton,
            self.download_selected,
            "Save the outputs of the selected completed jobs",
            "Ctrl+S",
        )
        self.act_copy_link = action(
            "Copy link",
            pixmaps.SP_FileLinkIcon,
            self.copy_links,
            "Copy a link to the output (on S3 it works for one hour)",
            "Ctrl+Shift+C",
        )
        self.act_refresh = action(
            "Refresh", pixmaps.SP_BrowserReload, self.reload, "Read the list again from the database", "F5"
        )

    # -- loading (what to read is ``JobPages``'s; the page shows how it went) -----------------------
    def refresh(self) -> None:
        """Called when the page is shown: load once; later, live events keep the rows current."""
        if self.pages.needs_load:
            self.reload()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.pages.loaded_once and not self.pages.loading:
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
        self.pages.reload()

    def load_started(self) -> None:
        self._text_timer.stop()  # this load reads the search text as typed so far
        if self.model.rowCount() == 0:
            self.table.placeholder = "Loading jobs…"
            self.table.viewport().update()

    def load_finished(self) -> None:
        if self.pages.load_error:
            self.table.placeholder = "The jobs could not be loaded."
            self.table.viewport().update()
        else:
            self.table.placeholder = self._empty_text()
            self._update_count()

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
        if not self.pages.loaded_once:
            self.count_label.setText("")
        elif shown >= total:
            self.count_label.setText(f"{shown:,} job{'s' if shown != 1 else ''}")
        else:
            self.count_label.setText(f"Showing {shown:,} of {total:,} jobs")
        if shown == 0 and self.pages.loaded_once:
            self.table.placeholder = self._empty_text()

    # -- selecting -----------------------------------------------------------------------------
    def select_job(self, job_id: str) -> None:
        """Select the job's row and scroll to it, loading it first if needed (the tray's
        "open job" and the Upload page call this). Filters that hide it are cleared."""
        self.pages.select_job(job_id)

    def select_row(self, row: int) -> None:
        index = self.model.index(row, COL_FILE)
        self.table.selectionModel().setCurrentIndex(
            index,
            self.table.selectionModel().SelectionFlag.ClearAndSelect | self.table.selectionModel().SelectionFlag.Rows,
        )
        self.table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def clear_filters(self) -> None:
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
            if any(
                selection.isRowSelected(row, QModelIndex()) for row in range(top_left.row(), bottom_right.row() + 1)
            ):
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
            self.select_row(index.row())
        self._update_actions()
        menu = QMenu(self)
        _add_actions(menu, self._job_actions())
        if self.context_menu is not None:
            self.context_menu.deleteLater()
        self.context_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def cancel_selected(self) -> None:
        ids = [job["id"] for job in self.selected_jobs() if job["status"] in ("queued", "active")]
        self._act_on(
            ids,
            "cancel",
            lambda farm, job_id: farm.cancel(job_id),
            {
                "removed": "Job {id} cancelled",
                "absent": "Job {id} cancelled",
                "cancelled": "Job {id} cancelled; its node stopped FFmpeg",
                "requested": "Cancelling job {id}: its node is stopping FFmpeg",
            },
        )

    def retry_selected(self) -> None:
        ids = [job["id"] for job in self.selected_jobs() if job["status"] in ("failed", "cancelled")]
        self._act_on(
            ids,
            "retry",
            lambda farm, job_id: farm.retry(job_id),
            {
                "retried": "Job {id} requeued",
                "requeued": "Job {id} requeued",
            },
        )

    def _act_on(self, ids: list[str], verb: str, call, messages: dict[str, str]) -> None:
        if not ids:
            return
        farm_of = self._farm

        def work() -> list[tuple[str, str | None, str | None]]:
            farm = farm_of()
            results: list[tuple[str, str | None, str | None]] = []
            for job_id in ids:
                try:
                    results.append((job_id, call(farm, job_id), None))
                except Exception as exc:  # reported per job: one failure must not hide the others
                    results.append((job_id, None, describe_error(exc)))
            return results

        def done(results):
            lines = []
            for job_id, outcome, error in results:
                if error is not None:
                    lines.append(f"Could not {verb} job {short_id(job_id)}: {error}")
                else:
                    lines.append(messages.get(outcome, "Job {id}: " + str(outcome)).format(id=short_id(job_id)))
                self.pages.schedule_refetch(job_id)
            self.show_message("\n".join(lines), error=any(error for _, _, error in results))

        self._run(work, done, lambda exc: self.show_message(f"Could not {verb}: {describe_error(exc)}", error=True))

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

        self._run(
            lambda: farm_of().show(job_id).to_json(),
            opened,
            lambda exc: self.show_message(f"Could not read job {short_id(job_id)}: {describe_error(exc)}", error=True),
        )

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
                self.show_message(
                    f"The output of job {short_id(job['id'])} is at {path}, but no application "
                    "opened it; open it from your file manager.",
                    error=True,
                )

        self.show_message(f"Downloading the output of job {short_id(job['id'])}…", sticky=True)
        self._run(
            fetch,
            fetched,
            lambda exc: self.show_message(
                f"Could not open the output of job {short_id(job['id'])}: {describe_error(exc)}", error=True
            ),
        )

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

        def work() -> list[tuple[str, Path | None, str | None]]:
            farm = farm_of()
            results: list[tuple[str, Path | None, str | None]] = []
            for job_id, dest in targets:
                try:
                    results.append((job_id, farm.download(job_id, dest), None))
                except Exception as exc:
                    results.append((job_id, None, describe_error(exc)))
            return results

        def done(results):
            lines = [
                f"Saved the output of job {short_id(job_id)} to {path}"
                if error is None
                else f"Could not download job {short_id(job_id)}: {error}"
                for job_id, path, error in results
            ]
            self.show_message("\n".join(lines), error=any(error for *_, error in results))

        self.show_message(f"Downloading {len(targets)} output(s)…", sticky=True)
        self._run(work, done, lambda exc: self.show_message(f"Could not download: {describe_error(exc)}", error=True))

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

        self._run(
            lambda: [farm_of().link(key) for key in keys],
            copied,
            lambda exc: self.show_message(
                f"Could not make a link: {describe_error(exc)}. Check the storage settings.", error=True
            ),
        )

    def _ask_save_path(self, suggested: str) -> str:
        path, _filter = QFileDialog.getSaveFileName(self, "Save the output", str(Path.home() / suggested))
        return path

    def _ask_directory(self) -> str:
        return QFileDialog.getExistingDirectory(self, "Save the outputs into", str(Path.home()))

    # -- the message line ---------------------------------------------------------------------
    def show_message(self, text: str, *, error: bool = False, sticky: bool = False) -> None:
        """Say what happened under the toolbar; errors and ``sticky`` notes stay until replaced."""
        self.message_bar.show_message(text, error=error, sticky=sticky)

    def clear_message(self) -> None:
        self.message_bar.clear()

    @property
    def message(self) -> str:
        return self.message_bar.text

    # -- plumbing --------------------------------------------------------------------------------
    def _farm(self) -> Farm:
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


def _add_actions(target: QToolBar | QMenu, actions: tuple[QAction | None, ...]) -> None:
    for action in actions:
        if action is None:
            target.addSeparator()
        else:
            target.addAction(action)


def _has_output(job: dict) -> bool:
    return job["status"] == "completed" and bool((job.get("output") or {}).get("key"))
