"""What the Jobs table holds and when to read more: loads, further pages, re-reads after events.

``JobPages`` is plain Python (no Qt), so plain pytest drives it. It reads the farm through the
Farm facade on the background runner and hands what it read to the table (``JobsModel``, or
anything with the ``JobTable`` methods); what the user should see goes to the view
(``JobPagesView``). The page wires it up: ``run`` is the runner's ``run``, ``defer`` starts the
short timer whose timeout calls ``refetch``.

Loading: the first page and the count come back together; further pages when the table asks
(``fetch_page``). A load's generation (the table's) drops pages of an older query.

Live updates: a ``progress`` event moves one bar in place (no read); an event that changes a job's
state queues its id, and the deferred ``refetch`` re-reads the queued ids in one background call,
so a burst from many nodes costs one task. Events that arrive while a first page is on its way may
be newer than what it read, so they are replayed when it lands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from app.models.job_query import JobQuery, short_id
from farm.client import Farm
from farm.domain.job import Job
from farm.services.events import JobEvent

PAGE_SIZE = 200
# Events after which a job's row may differ from the database's (progress is handled apart).
STATE_EVENTS = frozenset({"added", "waiting", "active", "completed", "failed", "removed", "delayed", "stalled"})

Row = dict[str, Any]  # a job's JSON without its log tail
Run = Callable[[Callable[[], Any], Callable[[Any], None], Callable[[Exception], None]], None]


class JobTable(Protocol):
    """The rows on screen (``JobsModel``): it holds them, ``JobPages`` decides what to read."""

    query: JobQuery
    generation: int

    def begin_load(self, query: JobQuery) -> int: ...
    def set_jobs(self, jobs: list[Row], total: int, generation: int) -> bool: ...
    def append_page(self, jobs: list[Row], generation: int, page_size: int) -> bool: ...
    def fetch_failed(self, generation: int) -> None: ...
    def set_progress(self, job_id: str, percent: float) -> bool: ...
    def apply_job(self, job: Row) -> str: ...
    def remove_job(self, job_id: str) -> bool: ...
    def row_of(self, job_id: str) -> int | None: ...
    def canFetchMore(self) -> bool: ...
    def fetchMore(self) -> None: ...
    @property
    def fetching(self) -> bool: ...


class JobPagesView(Protocol):
    """What the page does for ``JobPages``."""

    def query(self) -> JobQuery: ...  # the filters and order the user has chosen
    def clear_filters(self) -> None: ...  # show every job (the page then calls ``reload``)
    def select_row(self, row: int) -> None: ...  # select it and scroll to it
    def show_message(self, text: str, *, error: bool = False) -> None: ...
    def clear_message(self) -> None: ...
    def load_started(self) -> None: ...  # it reads the filters as they are now
    def load_finished(self) -> None: ...  # landed or failed: ``loaded_once`` and ``load_error`` say which


def describe_error(exc: Exception) -> str:
    """An exception in a message: its text, or its type where it has none."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


def job_row(job: Job) -> Row:
    """A table row: the job's JSON without its log tail (up to 16 kB each, read when asked for)."""
    return job.to_json(log_tail=False)


class JobPages:
    def __init__(
        self, table: JobTable, view: JobPagesView, farm_of: Callable[[], Farm], run: Run, defer: Callable[[], None]
    ):
        self.table, self.view = table, view
        self._farm_of = farm_of  # called on the pool thread: Settings may have replaced the farm
        self._run, self._defer = run, defer
        self.loading = False  # a first page is on its way
        self.loaded_once = False
        self.load_error: str | None = None
        self._pending_ids: set[str] = set()  # jobs to re-read at the next refetch
        self._refetch_due = False  # ``defer`` was called and its ``refetch`` has not run yet
        self._refetching = False
        self._touched_while_loading: dict[str, float | None] = {}  # id -> latest progress seen
        self._probed: set[str] = set()  # running jobs without a row, read once per load to place them
        self.wanted: str | None = None  # select_job's target, until it is loaded and selected

    @property
    def needs_load(self) -> bool:
        """Nothing was loaded yet (and no load is on its way), or the last load failed."""
        return (not self.loaded_once and not self.loading) or self.load_error is not None

    # -- loading -------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the first page for the view's filters and order (the rows stay until it lands)."""
        query = self.view.query()
        generation = self.table.begin_load(query)
        self.loading = True
        self._touched_while_loading = {}
        self._probed = set()
        self.view.load_started()
        farm_of = self._farm_of

        def load() -> tuple[list[Row], int]:
            farm = farm_of()
            jobs = farm.jobs(**query.filters(), **query.ordering(), limit=PAGE_SIZE, offset=0)
            return [job_row(job) for job in jobs], farm.count_jobs(**query.filters())

        self._run(
            load, lambda result: self._loaded(generation, *result), lambda exc: self._load_failed(generation, exc)
        )

    def _loaded(self, generation: int, jobs: list[Row], total: int) -> None:
        if not self.table.set_jobs(jobs, total, generation):
            return  # a newer load is on its way
        self.loading = False
        self.loaded_once = True
        if self.load_error:
            self.load_error = None
            self.view.clear_message()
        self.view.load_finished()
        touched, self._touched_while_loading = self._touched_while_loading, {}
        for job_id, progress in touched.items():
            if progress is not None:
                self.table.set_progress(job_id, progress)
            self.schedule_refetch(job_id)
        self._seek_wanted()

    def _load_failed(self, generation: int, exc: Exception) -> None:
        if generation != self.table.generation:
            return
        self.loading = False
        self.load_error = describe_error(exc)
        self.view.load_finished()
        self.view.show_message(
            f"Could not load the jobs: {self.load_error}. Check the database in Settings, then press Refresh.",
            error=True,
        )

    def fetch_page(self, offset: int) -> None:
        """The next page, from ``offset`` (the table asks when the view scrolls to its end)."""
        query, generation = self.table.query, self.table.generation
        farm_of = self._farm_of

        def load() -> list[Row]:
            jobs = farm_of().jobs(**query.filters(), **query.ordering(), limit=PAGE_SIZE, offset=offset)
            return [job_row(job) for job in jobs]

        def loaded(jobs: list[Row]) -> None:
            if self.table.append_page(jobs, generation, PAGE_SIZE):
                self._seek_wanted()

        def failed(exc: Exception) -> None:
            self.table.fetch_failed(generation)
            if generation == self.table.generation:
                self.wanted = None
                self.view.show_message(
                    f"Could not load more jobs: {describe_error(exc)}. Scroll down again to retry.", error=True
                )

        self._run(load, loaded, failed)

    # -- live updates ------------------------------------------------------------------------
    def on_job_event(self, event: JobEvent) -> None:
        job_id = event.job_id
        if not job_id:
            return
        if event.event == "progress":
            percent = event.progress
            if percent is None:
                return
            if self.loading:
                self._touched_while_loading[job_id] = percent
            if self.table.row_of(job_id) is None:
                # Its "active" may have been read before the node recorded it; read it once more,
                # so that a running job missing from an "active" filter shows up.
                if job_id not in self._probed and self.table.query.status in (None, "active"):
                    self._probed.add(job_id)
                    self.schedule_refetch(job_id)
            elif self.table.set_progress(job_id, percent):
                self.schedule_refetch(job_id)  # it started: read its node too
        elif event.event in STATE_EVENTS:
            if self.loading:
                self._touched_while_loading.setdefault(job_id, None)
            self.schedule_refetch(job_id)

    def schedule_refetch(self, job_id: str) -> None:
        """Re-read the job soon, with any others queued meanwhile."""
        self._pending_ids.add(job_id)
        if not self._refetching and not self._refetch_due:
            self._refetch_due = True
            self._defer()

    def refetch(self) -> None:
        """Re-read the queued jobs in one background call (``defer``'s timer calls this)."""
        self._refetch_due = False
        if not self._pending_ids:
            return
        ids, self._pending_ids = sorted(self._pending_ids), set()
        self._refetching = True
        farm_of = self._farm_of

        def read() -> dict[str, Row | None]:
            found = farm_of().jobs_by_id(ids)
            return {job_id: None if job is None else job_row(job) for job_id, job in found.items()}

        def done(found: dict[str, Row | None]) -> None:
            self._refetching = False
            for job_id, job in found.items():
                if job is None:
                    self.table.remove_job(job_id)
                else:
                    self.table.apply_job(job)
            self._seek_wanted()
            self._refetch_again()

        def failed(exc: Exception) -> None:
            self._refetching = False
            self.view.show_message(
                f"Could not update {len(ids)} job(s) from the database: {describe_error(exc)}. "
                "Press Refresh to try again.",
                error=True,
            )
            self._refetch_again()

        self._run(read, done, failed)

    def _refetch_again(self) -> None:
        """Jobs queued while a re-read was on its way go in the next one."""
        if self._pending_ids and not self._refetch_due:
            self._refetch_due = True
            self._defer()

    # -- selecting -----------------------------------------------------------------------------
    def select_job(self, job_id: str) -> None:
        """Select the job's row, loading it first if needed; filters that hide it are cleared."""
        row = self.table.row_of(job_id)
        if row is not None and not self.loading:
            self.view.select_row(row)
            return
        self.wanted = job_id
        farm_of = self._farm_of

        def read() -> Row | None:
            job = farm_of().jobs_by_id([job_id]).get(job_id)
            return None if job is None else job_row(job)

        def found(job: Row | None) -> None:
            if self.wanted != job_id:
                return
            if job is None:
                self.wanted = None
                self.view.show_message(f"Job {short_id(job_id)} is not in the database any more.", error=True)
                return
            if not self.view.query().matches(job):
                self.view.clear_filters()  # reloads; the seek goes on when the first page lands
                return
            if not self.loaded_once and not self.loading:
                self.reload()
                return
            if not self.loading:
                self.table.apply_job(job)  # a job made a moment ago may not have its row yet
            self._seek_wanted()

        def failed(exc: Exception) -> None:
            if self.wanted == job_id:
                self.wanted = None
            self.view.show_message(f"Could not find job {short_id(job_id)}: {describe_error(exc)}", error=True)

        self._run(read, found, failed)

    def _seek_wanted(self) -> None:
        job_id = self.wanted
        if job_id is None or self.loading:
            return
        row = self.table.row_of(job_id)
        if row is not None:
            self.wanted = None
            self.view.select_row(row)
        elif self.table.canFetchMore():
            self.table.fetchMore()  # the next page may hold it; its arrival calls us again
        elif not self.table.fetching:
            self.wanted = None
            self.view.show_message(f"Job {short_id(job_id)} is not in this list.", error=True)
