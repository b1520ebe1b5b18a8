"""JobsModel on its own: paging, in-place updates, live inserts and removals, what the cells say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from PySide6.QtCore import Qt

from app.models.jobs_model import (
    COL_CREATED,
    COL_ERROR,
    COL_FILE,
    COL_FORMAT,
    COL_JOB,
    COL_PROGRESS,
    COL_STATUS,
    COLUMNS,
    PROGRESS_ROLE,
    STATUS_COLOURS,
    JobQuery,
    JobsModel,
    format_time,
)
from farm.domain.job import isoformat

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_job(i: int, status: str = "queued", progress: float = 0.0, name: str | None = None, **extra) -> dict:
    job = {
        "id": f"{i:08x}-0000-4000-8000-000000000000",
        "status": status,
        "progress": progress,
        "attempts": 0,
        "node": None,
        "error": None,
        "priority": 0,
        "output": None,
        "outputs": [],
        "config": {"resolution": "720p", "format": "mp4", "includeAudio": True},
        "video": {"id": f"v{i}", "name": name or f"clip_{i:03}.mp4", "width": 320, "height": 240, "duration": 2.0},
        "created_at": isoformat(BASE + timedelta(minutes=i)),
        "started_at": None,
        "finished_at": None,
    }
    job.update(extra)
    return job


class Recorder:
    """Every structural and data signal the model emits, in order."""

    def __init__(self, model: JobsModel):
        self.events: list[tuple] = []
        model.dataChanged.connect(
            lambda tl, br, roles=(): self.events.append(("changed", tl.row(), tl.column(), br.row(), br.column()))
        )
        model.rowsInserted.connect(lambda _p, first, last: self.events.append(("inserted", first, last)))
        model.rowsRemoved.connect(lambda _p, first, last: self.events.append(("removed", first, last)))
        model.modelReset.connect(lambda: self.events.append(("reset",)))


def loaded_model(jobs: list[dict], total: int | None = None, query: JobQuery | None = None) -> JobsModel:
    model = JobsModel()
    generation = model.begin_load(query or JobQuery())
    assert model.set_jobs(jobs, len(jobs) if total is None else total, generation)
    return model


def newest_first(count: int, **kwargs) -> list[dict]:
    return [make_job(i, **kwargs) for i in reversed(range(count))]


def test_progress_changes_one_cell_only(qapp):
    model = loaded_model(newest_first(5, status="active"))
    recorder = Recorder(model)
    job_id = model.job(2)["id"]

    assert model.set_progress(job_id, 42.4) is False  # already active: the status stays
    assert recorder.events == [("changed", 2, COL_PROGRESS, 2, COL_PROGRESS)]
    cell = model.index(2, COL_PROGRESS)
    assert cell.data(PROGRESS_ROLE) == pytest.approx(42.4) and cell.data() == "42%"
    model.set_progress(job_id, 42.4)  # the same value again: nothing to repaint
    model.set_progress("not-a-loaded-job", 10)
    assert len(recorder.events) == 1


def test_a_queued_job_that_reports_progress_shows_as_active(qapp):
    model = loaded_model(newest_first(3))
    recorder = Recorder(model)
    assert model.set_progress(model.job(1)["id"], 5) is True
    assert model.index(1, COL_STATUS).data() == "active"
    assert sorted(recorder.events) == sorted(
        [("changed", 1, COL_PROGRESS, 1, COL_PROGRESS), ("changed", 1, COL_STATUS, 1, COL_STATUS)]
    )
    # ...but a settled job never goes back to active on a late progress event.
    model.apply_job({**model.job(1), "status": "completed", "progress": 100.0})
    model.set_progress(model.job(1)["id"], 99)
    assert model.index(1, COL_STATUS).data() == "completed"


def test_a_reread_job_updates_its_row_in_place_without_going_back(qapp):
    jobs = newest_first(4, status="active", progress=60.0, node="n1")
    model = loaded_model(jobs)
    recorder = Recorder(model)
    assert model.apply_job({**jobs[1], "progress": 55.0}) == "updated"  # the database lags the events
    assert model.index(1, COL_PROGRESS).data(PROGRESS_ROLE) == 60.0
    assert model.apply_job({**jobs[1], "status": "failed", "error": "FFmpeg failed: boom\nmore"}) == "updated"
    assert recorder.events[-1] == ("changed", 1, 0, 1, len(COLUMNS) - 1)
    assert model.index(1, COL_STATUS).data() == "failed" and model.index(1, COL_ERROR).data() == "FFmpeg failed: boom"
    assert not [e for e in recorder.events if e[0] != "changed"]


def test_new_jobs_go_where_they_sort_and_the_index_follows(qapp):
    model = loaded_model(newest_first(10))
    recorder = Recorder(model)
    newest = make_job(50)
    assert model.apply_job(newest) == "inserted"
    assert recorder.events == [("inserted", 0, 0)] and model.row_of(newest["id"]) == 0
    middle = make_job(100, created_at=isoformat(BASE + timedelta(minutes=4, seconds=30)))
    assert model.apply_job(middle) == "inserted"
    assert model.index(model.row_of(middle["id"]), COL_FILE).data() == "clip_100.mp4"
    assert model.job(model.row_of(middle["id"]) + 1)["video"]["name"] == "clip_004.mp4"
    assert all(model.row_of(job_id) == row for row, job_id in enumerate(model.job_ids()))
    assert model.total == 12


def test_a_job_that_sorts_after_the_loaded_pages_waits_for_its_page(qapp):
    model = loaded_model(newest_first(10)[:5], total=10)  # jobs 9..5 loaded, 4..0 not yet
    assert model.apply_job(make_job(200, created_at=isoformat(BASE - timedelta(days=1)))) == "skipped"
    assert model.rowCount() == 5 and model.total == 10


def test_rows_leave_when_they_stop_matching_the_status_filter(qapp):
    model = loaded_model(newest_first(3, status="active"), query=JobQuery(status="active"))
    recorder = Recorder(model)
    gone = model.job(1)
    assert model.apply_job({**gone, "status": "completed"}) == "removed"
    assert recorder.events == [("removed", 1, 1)] and model.row_of(gone["id"]) is None
    assert [model.row_of(job_id) for job_id in model.job_ids()] == [0, 1] and model.total == 2
    assert model.apply_job(make_job(99, status="queued")) == "skipped"


def test_sorted_by_name_a_new_job_is_placed_by_name(qapp):
    query = JobQuery(order_by="name", descending=False)
    model = loaded_model(
        [make_job(i, name=name) for i, name in enumerate(["apple.mp4", "Cherry.mp4", "kiwi.mp4"])], query=query
    )
    model.apply_job(make_job(7, name="banana.mov"))
    assert [model.index(row, COL_FILE).data() for row in range(4)] == [
        "apple.mp4",
        "banana.mov",
        "Cherry.mp4",
        "kiwi.mp4",
    ]


def test_paging_asks_once_skips_duplicates_and_drops_stale_pages(qapp):
    model = JobsModel()
    asked = []
    model.fetch_requested.connect(asked.append)
    generation = model.begin_load(JobQuery())
    model.set_jobs(newest_first(500)[:200], 500, generation)
    assert model.canFetchMore()
    model.fetchMore()
    model.fetchMore()  # while a page is on its way, not again
    assert asked == [200] and not model.canFetchMore()
    page = newest_first(500)[199:399]  # shifted by one: a live insert pushed the list down
    assert model.append_page(page, generation, 200)
    assert model.rowCount() == 399 and len(set(model.job_ids())) == 399 and model.canFetchMore()

    newer = model.begin_load(JobQuery(status="failed"))
    assert not model.append_page(newest_first(500)[399:], generation, 200)  # for the old query
    assert not model.set_jobs([], 0, generation)
    assert model.rowCount() == 399
    assert model.set_jobs([], 0, newer) and model.rowCount() == 0 and not model.canFetchMore()


def test_a_short_page_ends_the_list_even_if_the_count_said_more(qapp):
    model = loaded_model(newest_first(300)[:200], total=300)
    model.fetchMore()
    model.append_page(newest_first(300)[200:250], model.generation, 200)  # 50 were deleted meanwhile
    assert model.total == 250 and not model.canFetchMore()


def test_what_the_cells_say(qapp):
    job = make_job(
        3,
        status="failed",
        error="the input is not a video\ntraceback…",
        config={"resolution": "480p", "format": "webm", "includeAudio": False},
    )
    model = loaded_model([job, make_job(1, status="completed"), make_job(0)])
    assert model.index(0, COL_JOB).data() == job["id"][:8]
    assert model.index(0, COL_JOB).data(Qt.ItemDataRole.ToolTipRole) == job["id"]
    assert model.index(0, COL_FORMAT).data() == "WEBM · 480p · no audio"
    assert model.index(0, COL_ERROR).data() == "the input is not a video"
    assert model.index(0, COL_CREATED).data() == format_time(job["created_at"])
    assert model.index(0, COL_STATUS).data(Qt.ItemDataRole.ForegroundRole).color().name() == STATUS_COLOURS["failed"][0]
    background = model.index(1, COL_STATUS).data(Qt.ItemDataRole.BackgroundRole)
    assert background.color().name() == STATUS_COLOURS["completed"][1]
    assert model.index(2, COL_STATUS).data(Qt.ItemDataRole.BackgroundRole) is None  # queued: plain
    now = datetime(2024, 5, 1, 18, 0, tzinfo=UTC).astimezone()
    assert len(format_time(isoformat(now), now=now)) == 8  # today: the time only
    assert len(format_time(isoformat(now - timedelta(days=3)), now=now)) == 16


def test_the_query_matches_like_the_database(qapp):
    job = make_job(1, name="Interview_A.mov")
    assert JobQuery(text="interview").matches(job) and JobQuery(text=job["id"][:6].upper()).matches(job)
    assert not JobQuery(text="b-roll").matches(job)
    assert not JobQuery(status="active").matches(job)
    assert JobQuery(since=BASE).matches(job) and not JobQuery(since=BASE + timedelta(hours=1)).matches(job)
