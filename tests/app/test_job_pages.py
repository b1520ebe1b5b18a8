"""JobPages on its own, with no Qt: what it reads from a real farm (SQLite) and hands to the table.

The background runner is stepped by the test (``Runner.finish``), so a test can let events arrive
while a load is still on its way; the table is a plain list with JobsModel's paging rules.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.models import job_pages
from app.models.job_pages import JobPages
from app.models.job_query import JobQuery
from farm.client import Farm
from farm.services.db import Job, repo
from farm.services.events import JobEvent

PAGE = 3


class Runner:
    """The background runner, stepped by the test: a task waits until ``finish`` runs it."""

    def __init__(self):
        self.tasks: list = []

    def run(self, fn, on_done, on_error) -> None:
        self.tasks.append((fn, on_done, on_error))

    def finish(self) -> int:
        """Run the waiting tasks in order (and those they start); how many ran."""
        ran = 0
        while self.tasks:
            fn, on_done, on_error = self.tasks.pop(0)
            ran += 1
            try:
                result = fn()
            except Exception as exc:
                on_error(exc)
            else:
                on_done(result)
        return ran


class ListTable:
    """The rows as JobsModel keeps them (generations, pages, live changes), in a plain list."""

    def __init__(self):
        self.rows: list[dict] = []
        self.query = JobQuery()
        self.generation = 0
        self.total = 0
        self.fetching = False
        self.on_fetch = None  # JobsModel's fetch_requested

    def begin_load(self, query: JobQuery) -> int:
        self.generation += 1
        self.query, self.fetching = query, False
        return self.generation

    def set_jobs(self, jobs, total, generation) -> bool:
        if generation != self.generation:
            return False
        self.rows, self.total, self.fetching = list(jobs), max(total, len(jobs)), False
        return True

    def append_page(self, jobs, generation, page_size) -> bool:
        if generation != self.generation:
            return False
        self.fetching = False
        shown = {job["id"] for job in self.rows}
        self.rows += [job for job in jobs if job["id"] not in shown]
        self.total = len(self.rows) if len(jobs) < page_size else max(self.total, len(self.rows))
        return True

    def fetch_failed(self, generation) -> None:
        if generation == self.generation:
            self.fetching = False

    def set_progress(self, job_id, percent) -> bool:
        row = self.row_of(job_id)
        if row is None:
            return False
        job = self.rows[row]
        started = job["status"] == "queued"
        job["status"] = "active" if started else job["status"]
        job["progress"] = percent
        return started

    def apply_job(self, job) -> str:
        row = self.row_of(job["id"])
        if not self.query.matches(job):
            return "removed" if self.remove_job(job["id"]) else "skipped"
        if row is not None:
            self.rows[row] = job
            return "updated"
        # These tests keep the default order, newest first; a job past the loaded pages waits for its page.
        position = next(
            (number for number, shown in enumerate(self.rows) if shown["created_at"] < job["created_at"]),
            len(self.rows),
        )
        if position == len(self.rows) and len(self.rows) < self.total:
            return "skipped"
        self.rows.insert(position, job)
        self.total += 1
        return "inserted"

    def remove_job(self, job_id) -> bool:
        row = self.row_of(job_id)
        if row is None:
            return False
        del self.rows[row]
        self.total -= 1
        return True

    def row_of(self, job_id) -> int | None:
        return next((number for number, job in enumerate(self.rows) if job["id"] == job_id), None)

    def canFetchMore(self) -> bool:
        return not self.fetching and len(self.rows) < self.total

    def fetchMore(self) -> None:
        if self.canFetchMore():
            self.fetching = True
            self.on_fetch(len(self.rows))


class View:
    """What the page would show: the messages, the selected row, the loads it was told about."""

    def __init__(self):
        self.chosen = JobQuery()
        self.messages: list[tuple[str, bool]] = []
        self.selected: list[int] = []
        self.loads: list[str] = []
        self.pages: JobPages | None = None

    def query(self) -> JobQuery:
        return self.chosen

    def clear_filters(self) -> None:
        self.chosen = JobQuery()
        self.pages.reload()

    def select_row(self, row: int) -> None:
        self.selected.append(row)

    def show_message(self, text: str, *, error: bool = False) -> None:
        self.messages.append((text, error))

    def clear_message(self) -> None:
        self.messages.append(("", False))

    def load_started(self) -> None:
        self.loads.append("started")

    def load_finished(self) -> None:
        self.loads.append("finished")


@pytest.fixture
def farm(settings):
    farm = Farm(settings, start_embedded=False)
    yield farm
    farm.close()


@pytest.fixture
def setup(farm, monkeypatch):
    """JobPages over a list table and a recording view, with pages of three jobs."""
    monkeypatch.setattr(job_pages, "PAGE_SIZE", PAGE)
    table, view, runner, deferred = ListTable(), View(), Runner(), []
    broken: list[Exception] = []

    def farm_of() -> Farm:
        if broken:
            raise broken[0]
        return farm

    pages = JobPages(table, view, farm_of, runner.run, lambda: deferred.append(1))
    table.on_fetch = pages.fetch_page
    view.pages = pages
    return pages, table, view, runner, deferred, broken


def add_jobs(farm: Farm, count: int, *, status: str = "queued") -> list[str]:
    """``count`` jobs, newest first in the returned list (the table's default order)."""
    now = datetime.now(UTC)
    ids = []
    for number in range(count):
        video = repo.create_video(
            farm.db,
            name=f"clip_{number:02}.mp4",
            key=f"inputs/v{number}/clip.mp4",
            size=1000,
            duration=2.0,
            width=320,
            height=240,
            video_codec="h264",
            container="mov",
            submitted_by="ed",
        )
        job = repo.create_job(farm.db, video.id, {"resolution": "720p", "format": "mp4", "includeAudio": True})
        with farm.db.session() as session:
            session.execute(
                sa.update(Job)
                .where(Job.id == job.id)
                .values(created_at=now - timedelta(minutes=count - number), status=status)
            )
        ids.append(job.id)
    return ids[::-1]


def ids(table: ListTable) -> list[str]:
    return [job["id"] for job in table.rows]


# -- loading and paging --------------------------------------------------------------------------


def test_the_first_page_and_the_count_come_in_one_task_then_pages_follow(setup, farm):
    pages, table, view, runner, _deferred, _broken = setup
    newest_first = add_jobs(farm, 7)
    assert pages.needs_load

    pages.reload()
    assert pages.loading and view.loads == ["started"] and table.rows == []
    assert runner.finish() == 1
    assert ids(table) == newest_first[:PAGE] and table.total == 7
    assert pages.loaded_once and not pages.loading and not pages.needs_load
    assert view.loads == ["started", "finished"]
    assert "log_tail" not in table.rows[0] and table.rows[0]["video"]["name"] == "clip_06.mp4"

    table.fetchMore()
    table.fetchMore()  # asked again before the page came: still one read
    assert runner.finish() == 1
    table.fetchMore()
    runner.finish()
    assert ids(table) == newest_first and not table.canFetchMore()


def test_a_page_of_an_older_query_is_dropped(setup, farm):
    pages, table, view, runner, _deferred, _broken = setup
    add_jobs(farm, 2)
    failed = add_jobs(farm, 1, status="failed")
    pages.reload()
    view.chosen = JobQuery(status="failed")
    pages.reload()  # before the first load landed
    runner.finish()
    assert ids(table) == failed and table.total == 1 and not pages.loading
    assert view.loads == ["started", "started", "finished"]


def test_a_failed_load_says_so_and_the_next_one_clears_it(setup, farm):
    pages, table, view, runner, _deferred, broken = setup
    add_jobs(farm, 2)
    broken.append(RuntimeError("database is locked"))
    pages.reload()
    runner.finish()
    assert pages.load_error == "database is locked" and pages.needs_load and not pages.loading
    assert view.messages == [
        ("Could not load the jobs: database is locked. Check the database in Settings, then press Refresh.", True)
    ]
    broken.clear()
    pages.reload()
    runner.finish()
    assert pages.load_error is None and len(table.rows) == 2
    assert view.messages[-1] == ("", False)  # the load's error was taken away


def test_a_failed_page_can_be_asked_for_again(setup, farm):
    pages, table, view, runner, _deferred, broken = setup
    add_jobs(farm, 5)
    pages.reload()
    runner.finish()
    broken.append(OSError())
    table.fetchMore()
    runner.finish()
    assert view.messages == [("Could not load more jobs: OSError. Scroll down again to retry.", True)]
    assert len(table.rows) == PAGE and table.canFetchMore()
    broken.clear()
    table.fetchMore()
    runner.finish()
    assert len(table.rows) == 5


# -- live updates --------------------------------------------------------------------------------


def test_progress_moves_a_bar_without_a_read_and_a_start_reads_the_job_once(setup, farm):
    pages, table, _view, runner, deferred, _broken = setup
    job_id = add_jobs(farm, 1)[0]
    pages.reload()
    runner.finish()

    pages.on_job_event(JobEvent("progress", job_id, "1-0", {"data": 12.5}))  # queued -> active: read its node
    pages.on_job_event(JobEvent("progress", job_id, "1-1", {"data": 20}))
    assert table.rows[0]["progress"] == 20 and table.rows[0]["status"] == "active"
    assert deferred == [1] and runner.tasks == []
    pages.on_job_event(JobEvent("progress", job_id, "1-2", {}))  # no value: nothing to do
    pages.on_job_event(JobEvent("progress", None, "1-3", {"data": 5}))
    assert deferred == [1] and table.rows[0]["progress"] == 20


def test_a_burst_of_state_events_costs_one_read(setup, farm):
    pages, table, _view, runner, deferred, _broken = setup
    first, second = add_jobs(farm, 2)
    pages.reload()
    runner.finish()
    repo.mark_active(farm.db, first, "node-a", 1)
    repo.finish_job(farm.db, first, "completed", attempt=1)
    with farm.db.session() as session:
        session.execute(sa.delete(Job).where(Job.id == second))

    for number in range(30):
        pages.on_job_event(JobEvent("completed" if number % 2 else "active", first, f"2-{number}", {}))
        pages.on_job_event(JobEvent("removed", second, f"3-{number}", {}))
    pages.on_job_event(JobEvent("log", first, "4-0", {}))  # not a state change
    assert deferred == [1]
    pages.refetch()  # the timer's tick
    assert runner.finish() == 1
    assert ids(table) == [first] and table.rows[0]["status"] == "completed"

    pages.refetch()  # a tick with nothing queued reads nothing
    assert runner.tasks == []


def test_events_while_a_re_read_is_on_its_way_go_in_the_next_one(setup, farm):
    pages, table, _view, runner, deferred, _broken = setup
    first, second = add_jobs(farm, 2)
    pages.reload()
    runner.finish()
    pages.on_job_event(JobEvent("active", first, "1-0", {}))
    pages.refetch()
    pages.on_job_event(JobEvent("active", second, "1-1", {}))
    assert deferred == [1]  # one read is on its way: the next waits for it
    runner.finish()
    assert deferred == [1, 1]
    pages.refetch()
    assert len(runner.tasks) == 1


def test_events_that_arrive_while_the_first_page_loads_are_replayed(setup, farm):
    pages, table, _view, runner, deferred, _broken = setup
    job_id = add_jobs(farm, 1)[0]
    pages.reload()
    pages.on_job_event(JobEvent("progress", job_id, "1-0", {"data": 40}))  # no row yet
    assert deferred == [1]  # probed: a running job not shown is read once
    pages.on_job_event(JobEvent("progress", job_id, "1-1", {"data": 45}))
    runner.finish()
    assert table.rows[0]["progress"] == 45  # newer than what the page read


def test_a_running_job_missing_from_an_active_filter_is_read_once(setup, farm):
    pages, table, view, runner, deferred, _broken = setup
    job_id = add_jobs(farm, 1)[0]
    view.chosen = JobQuery(status="active")
    pages.reload()
    runner.finish()
    assert table.rows == []
    repo.mark_active(farm.db, job_id, "node-a", 1)
    pages.on_job_event(JobEvent("progress", job_id, "1-0", {"data": 10}))
    pages.refetch()
    runner.finish()
    assert ids(table) == [job_id]
    pages.on_job_event(JobEvent("progress", "some-other-job", "1-1", {"data": 10}))
    pages.on_job_event(JobEvent("progress", "some-other-job", "1-2", {"data": 11}))
    pages.refetch()
    assert runner.finish() == 1  # read once, not per event
    pages.refetch()
    assert runner.tasks == []


# -- selecting -----------------------------------------------------------------------------------


def test_select_job_loads_pages_until_the_job_is_there(setup, farm):
    pages, table, view, runner, _deferred, _broken = setup
    newest_first = add_jobs(farm, 8)
    pages.reload()
    runner.finish()
    pages.select_job(newest_first[6])  # on the third page
    runner.finish()
    assert view.selected == [6] and len(table.rows) == 8 and pages.wanted is None
    pages.select_job(newest_first[1])  # shown: selected at once
    assert view.selected == [6, 1] and runner.tasks == []


def test_select_job_clears_a_filter_that_hides_it(setup, farm):
    pages, table, view, runner, _deferred, _broken = setup
    queued = add_jobs(farm, 2)
    failed = add_jobs(farm, 1, status="failed")
    view.chosen = JobQuery(status="failed")
    pages.reload()
    runner.finish()
    assert ids(table) == failed
    pages.select_job(queued[1])
    runner.finish()
    assert view.chosen == JobQuery() and len(table.rows) == 3
    assert view.selected == [table.row_of(queued[1])]


def test_select_job_of_a_job_that_is_gone_says_so(setup, farm):
    pages, _table, view, runner, _deferred, _broken = setup
    add_jobs(farm, 1)
    pages.reload()
    runner.finish()
    pages.select_job("0badc0de-0000-4000-8000-000000000000")
    runner.finish()
    assert view.messages == [("Job 0badc0de is not in the database any more.", True)]
    assert view.selected == [] and pages.wanted is None


def test_the_paging_model_needs_no_qt():
    code = "import sys, app.models.job_pages; print(sorted(m for m in sys.modules if m.startswith('PySide6')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
