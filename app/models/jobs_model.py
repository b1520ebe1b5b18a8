"""The jobs table's model: pages of jobs from the database, kept live by job events.

The model never queries anything itself. The page loads pages through the background runner and
hands them in (``set_jobs``, ``append_page``); when the view scrolls to the end, ``fetchMore``
asks for the next page with ``fetch_requested``. Live changes arrive one job at a time:
``set_progress`` moves one bar (one cell changes), ``apply_job`` puts a re-read job in place, or
where it belongs in the current order, or drops it once it no longer matches the filter.

Rows are the jobs' JSON (``farm.domain.job.Job.to_json(log_tail=False)``: the log tail can be long).
"""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor

from app.models.job_query import JobQuery, parse_time, short_id
from farm.domain.job import order_key

COLUMNS = ("Job", "File", "Status", "Progress", "Format", "Node", "Created", "Finished", "Error")
(COL_JOB, COL_FILE, COL_STATUS, COL_PROGRESS, COL_FORMAT, COL_NODE, COL_CREATED, COL_FINISHED, COL_ERROR) = range(
    len(COLUMNS)
)

# Columns the database can sort by, and the ``list_jobs(order_by=...)`` field for each.
SORT_FIELDS = {
    COL_FILE: "name",
    COL_STATUS: "status",
    COL_PROGRESS: "progress",
    COL_CREATED: "created_at",
    COL_FINISHED: "finished_at",
}
# The first click on a date or progress header shows the newest/most first.
_FIRST_DESCENDING = {COL_PROGRESS, COL_CREATED, COL_FINISHED}

_NO_PARENT = QModelIndex()  # the root: a table's rows have no parent
JOB_ROLE = Qt.ItemDataRole.UserRole + 1  # the row's job dict
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 2  # float 0-100 for the progress delegate; None: no bar
BAR_ENABLED_ROLE = Qt.ItemDataRole.UserRole + 3  # False: the bar is drawn greyed (the run did not succeed)

# Text and a faint background per status; queued keeps the table's own colours.
STATUS_COLOURS = {
    "active": ("#1849a9", "#e9f0fd"),
    "completed": ("#17693a", "#e8f6ed"),
    "failed": ("#b42318", "#fdeceb"),
    "cancelled": ("#4b5563", "#eff0f2"),
}
_BRUSHES = {status: (QBrush(QColor(fg)), QBrush(QColor(bg))) for status, (fg, bg) in STATUS_COLOURS.items()}


class JobsModel(QAbstractTableModel):
    fetch_requested = Signal(int)  # offset of the next page (connected by the page, which loads it)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._jobs: list[dict] = []
        self._rows: dict[str, int] = {}  # job id -> row
        self.query = JobQuery()
        self.total = 0  # jobs matching the query in the database (as far as we know)
        self.generation = 0  # bumped per (re)load, so a page from an older query is dropped
        self._fetching = False
        self._key = order_key(self.query.order_by)

    # -- Qt's table interface ---------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.InitialSortOrderRole:
            descending = section in _FIRST_DESCENDING
            return Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder
        if role == Qt.ItemDataRole.ToolTipRole and section not in SORT_FIELDS:
            return f"{COLUMNS[section]} (not sortable)"
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self._jobs):
            return None
        job = self._jobs[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(job, column)
        if role == PROGRESS_ROLE:  # no bar for a job still waiting its turn
            value = float(job.get("progress") or 0.0)
            return None if job["status"] == "queued" and value == 0 else value
        if role == JOB_ROLE:
            return job
        if role == BAR_ENABLED_ROLE:
            return job["status"] not in ("failed", "cancelled")
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(job, column)
        if column == COL_STATUS and role in (Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.BackgroundRole):
            brushes = _BRUSHES.get(job["status"])
            if brushes:
                return brushes[0] if role == Qt.ItemDataRole.ForegroundRole else brushes[1]
        return None

    def canFetchMore(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> bool:
        return not parent.isValid() and not self._fetching and len(self._jobs) < self.total

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex = _NO_PARENT) -> None:
        if self.canFetchMore(parent):
            self._fetching = True
            self.fetch_requested.emit(len(self._jobs))

    @property
    def fetching(self) -> bool:
        return self._fetching

    # -- loading -----------------------------------------------------------------------------
    def begin_load(self, query: JobQuery) -> int:
        """A new query starts loading; the rows stay until its first page arrives."""
        self.generation += 1
        self.query = query
        self._key = order_key(query.order_by)
        self._fetching = False
        return self.generation

    def set_jobs(self, jobs: list[dict], total: int, generation: int) -> bool:
        """The first page of a load; False (and nothing changes) if a newer load began since."""
        if generation != self.generation:
            return False
        self.beginResetModel()
        self._jobs = list(jobs)
        self._reindex()
        self.total = max(total, len(self._jobs))
        self._fetching = False
        self.endResetModel()
        return True

    def append_page(self, jobs: list[dict], generation: int, page_size: int) -> bool:
        """A further page. Jobs already shown (a live insert shifted the pages) are skipped."""
        if generation != self.generation:
            return False
        self._fetching = False
        fresh = [job for job in jobs if job["id"] not in self._rows]
        if fresh:
            first = len(self._jobs)
            self.beginInsertRows(QModelIndex(), first, first + len(fresh) - 1)
            for job in fresh:
                self._rows[job["id"]] = len(self._jobs)
                self._jobs.append(job)
            self.endInsertRows()
        if len(jobs) < page_size:  # the end of the list: whatever the count said, there is no more
            self.total = len(self._jobs)
        else:
            self.total = max(self.total, len(self._jobs))
        return True

    def fetch_failed(self, generation: int) -> None:
        if generation == self.generation:
            self._fetching = False

    # -- live changes ----------------------------------------------------------------------------
    def set_progress(self, job_id: str, percent: float) -> bool:
        """Move one job's bar: ``dataChanged`` for that one cell. A queued job that reports
        progress is running, so its status follows; returns True when the status changed too."""
        row = self._rows.get(job_id)
        if row is None:
            return False
        job = self._jobs[row]
        percent = min(100.0, max(0.0, float(percent)))
        status_changed = job["status"] == "queued"
        if status_changed:
            job["status"] = "active"
            cell = self.index(row, COL_STATUS)
            self.dataChanged.emit(cell, cell, [Qt.ItemDataRole.DisplayRole])
        if job.get("progress") != percent:
            job["progress"] = percent
            cell = self.index(row, COL_PROGRESS)
            self.dataChanged.emit(cell, cell, [PROGRESS_ROLE, Qt.ItemDataRole.DisplayRole])
        return status_changed

    def apply_job(self, job: dict) -> str:
        """Put a freshly read job in the table. Returns what happened: ``updated``, ``inserted``,
        ``removed`` (no longer matches the filter), or ``skipped`` (matches, but belongs to a page
        not loaded yet, or matches nothing shown)."""
        row = self._rows.get(job["id"])
        matches = self.query.matches(job)
        if row is not None:
            if not matches:
                self.remove_job(job["id"])
                return "removed"
            old = self._jobs[row]
            if old["status"] == job["status"] == "active" and old.get("node") == job.get("node"):
                # The event stream may be ahead of the database's copy of the bar: never go back.
                job = {**job, "progress": max(old.get("progress") or 0.0, job.get("progress") or 0.0)}
            self._jobs[row] = job
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
            return "updated"
        if not matches:
            return "skipped"
        position = self._position(job)
        if position >= len(self._jobs) and len(self._jobs) < self.total:
            return "skipped"  # it sorts after the loaded pages: a later page brings it
        self.beginInsertRows(QModelIndex(), position, position)
        self._jobs.insert(position, job)
        self._reindex(position)
        self.total += 1
        self.endInsertRows()
        return "inserted"

    def remove_job(self, job_id: str) -> bool:
        row = self._rows.get(job_id)
        if row is None:
            return False
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._jobs[row]
        del self._rows[job_id]
        self._reindex(row)
        self.total = max(0, self.total - 1)
        self.endRemoveRows()
        return True

    # -- reading ---------------------------------------------------------------------------------
    def job(self, row: int) -> dict:
        return self._jobs[row]

    def row_of(self, job_id: str) -> int | None:
        return self._rows.get(job_id)

    def job_ids(self) -> list[str]:
        return [job["id"] for job in self._jobs]

    # -- helpers ---------------------------------------------------------------------------------
    def _reindex(self, start: int = 0) -> None:
        if start == 0:
            self._rows = {}
        for row in range(start, len(self._jobs)):
            self._rows[self._jobs[row]["id"]] = row

    def _position(self, job: dict) -> int:
        """Where the job goes in the current order (binary search over the loaded rows)."""
        key, descending = self._key(job), self.query.descending
        low, high = 0, len(self._jobs)
        while low < high:
            middle = (low + high) // 2
            other = self._key(self._jobs[middle])
            if (other > key) if descending else (other < key):
                low = middle + 1
            else:
                high = middle
        return low

    def _display(self, job: dict, column: int) -> str:
        if column == COL_JOB:
            return short_id(job["id"])
        if column == COL_FILE:
            return (job.get("video") or {}).get("name") or "–"
        if column == COL_STATUS:
            return job["status"]
        if column == COL_PROGRESS:
            value = float(job.get("progress") or 0)
            return "" if job["status"] == "queued" and not value else f"{value:.0f}%"
        if column == COL_FORMAT:
            return format_config(job.get("config"))
        if column == COL_NODE:
            return job.get("node") or ""
        if column == COL_CREATED:
            return format_time(job.get("created_at"))
        if column == COL_FINISHED:
            return format_time(job.get("finished_at"))
        if column == COL_ERROR:
            return first_line(job.get("error"))
        return ""

    def _tooltip(self, job: dict, column: int) -> str | None:
        if column == COL_JOB:
            return job["id"]
        if column == COL_FILE:
            video = job.get("video") or {}
            if video.get("width"):
                return f"{video.get('name')}\n{video['width']}×{video['height']}, {video.get('duration', 0):.1f} s"
            return video.get("name")
        if column in (COL_CREATED, COL_FINISHED):
            moment = parse_time(job.get("created_at" if column == COL_CREATED else "finished_at"))
            return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else None
        if column == COL_ERROR and job.get("error"):
            return job["error"]
        return None


# -- formatting (plain functions, so the dialog and tests use the same words) ----------------------


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def format_config(config: dict | None) -> str:
    if not config or "format" not in config:
        return "–"
    text = f"{str(config['format']).upper()} · {config.get('resolution', '?')}"
    if config.get("includeAudio") is False:
        text += " · no audio"
    return text


def format_time(value: str | None, now: datetime | None = None) -> str:
    """Local time: just the time for today, else the date too."""
    moment = parse_time(value)
    if moment is None:
        return ""
    local = moment.astimezone()
    today = (now or datetime.now().astimezone()).date()
    return local.strftime("%H:%M:%S") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")
