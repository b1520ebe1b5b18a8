"""The Jobs page on a real local farm: rows from the database, live progress from the event stream,
cancel/retry from the context menu, filters, server-side sorting, paging through 10,000 jobs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from PySide6.QtCore import QPoint, Qt, QTimer, QUrl
from PySide6.QtGui import QGuiApplication

from app.models.job_pages import PAGE_SIZE
from app.models.jobs_model import BAR_ENABLED_ROLE, COL_FILE, COL_NODE, COL_PROGRESS, COL_STATUS, PROGRESS_ROLE
from app.pages.jobs_page import JobsPage
from farm.domain.jobspec import OutputConfig
from farm.services.db import Job, repo
from farm.services.events import JobEvent

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def page(qtbot, services, runner, hub):
    page = JobsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitUntil(lambda: page.count_label.text() != "", timeout=10_000)  # the first page is in
    return page


def wait_for_event_stream(qtbot, hub) -> None:
    """Events written before the listener connected are not replayed: wait for it first."""
    qtbot.waitUntil(
        lambda: any(getattr(getattr(t, "_listener", None), "connected", False) for t in hub._threads), timeout=10_000
    )


def status(page: JobsPage, job_id: str) -> str | None:
    row = page.model.row_of(job_id)
    return None if row is None else page.model.index(row, COL_STATUS).data()


def progress(page: JobsPage, job_id: str) -> float:
    """The bar's value (0 where the row shows no bar yet, or is not there)."""
    row = page.model.row_of(job_id)
    return (None if row is None else page.model.index(row, COL_PROGRESS).data(PROGRESS_ROLE)) or 0.0


def files(page: JobsPage) -> list[str]:
    return [page.model.index(row, COL_FILE).data() for row in range(page.model.rowCount())]


def context_menu_action(qtbot, page: JobsPage, job_id: str, text: str):
    """Right-click the job's row (the page selects it) and find the menu's action."""
    row = page.model.row_of(job_id)
    rect = page.table.visualRect(page.model.index(row, COL_FILE))
    page.table.customContextMenuRequested.emit(rect.center())
    qtbot.waitUntil(lambda: page.context_menu is not None and page.context_menu.isVisible())
    assert [job["id"] for job in page.selected_jobs()] == [job_id]
    return next(action for action in page.context_menu.actions() if action.text() == text)


def count_resets(page: JobsPage) -> list:
    resets = []
    page.model.modelReset.connect(lambda: resets.append(1))
    return resets


def add_job(services, name: str, *, created: datetime | None = None) -> dict:
    db = services.farm.db
    video = repo.create_video(
        db,
        name=name,
        key=f"inputs/x/{name}",
        size=1000,
        duration=2.0,
        width=320,
        height=240,
        video_codec="h264",
        container="mov",
        submitted_by="ed",
    )
    job = repo.create_job(db, video.id, {"resolution": "720p", "format": "mp4", "includeAudio": True})
    if created is not None:
        with db.session() as session:
            session.execute(sa.update(Job).where(Job.id == job.id).values(created_at=created))
    return services.farm.show(job.id).to_json()


# -- live jobs on a real node --------------------------------------------------------------------


def test_a_running_job_moves_its_bar_from_events_and_its_output_can_be_opened(
    qtbot, page, services, hub, local_node, make_clip, tmp_path, qapp
):
    wait_for_event_stream(qtbot, hub)
    resets = count_resets(page)
    seen = []
    page.model.dataChanged.connect(
        lambda tl, br, roles=(): (
            seen.append(tl.data(PROGRESS_ROLE)) if tl.column() == br.column() == COL_PROGRESS else None
        )
    )

    job = services.farm.submit([make_clip(1280, 720, 15.0)], OutputConfig(resolution="360p"))[0].to_json()
    qtbot.waitUntil(lambda: status(page, job["id"]) is not None, timeout=10_000)
    assert page.model.row_of(job["id"]) == 0  # new jobs arrive at the top
    qtbot.waitUntil(lambda: status(page, job["id"]) == "completed", timeout=60_000)

    assert progress(page, job["id"]) == 100.0
    assert page.model.index(0, COL_NODE).data().startswith("test-node")
    moving = [value for value in seen if 0 < value < 100]
    assert moving, f"the bar never showed a value between 0 and 100: {seen}"
    assert moving == sorted(moving)
    assert resets == [], "live updates must not reload the table"

    # The completed job's output: open (via the cache), copy a link, download.
    page.select_row(0)
    assert page.act_open.isEnabled() and page.act_copy_link.isEnabled() and page.act_download.isEnabled()
    assert not page.act_cancel.isEnabled() and not page.act_retry.isEnabled()
    opened: list[QUrl] = []
    page.open_url = lambda url: opened.append(url) or True
    page.act_open.trigger()
    qtbot.waitUntil(lambda: "Opened the output" in page.message, timeout=10_000)
    cached = Path(opened[0].toLocalFile())
    assert cached.is_file() and cached.stat().st_size > 1000
    assert cached.is_relative_to(services.settings.data_dir / "cache")

    page.act_copy_link.trigger()
    qtbot.waitUntil(lambda: "Copied the link" in page.message, timeout=10_000)
    link = QGuiApplication.clipboard().text()
    assert QUrl(link).toLocalFile() and Path(QUrl(link).toLocalFile()).stat().st_size == cached.stat().st_size

    page.ask_save_path = lambda suggested: str(tmp_path / f"saved-{suggested}")
    page.act_download.trigger()
    qtbot.waitUntil(lambda: "Saved the output" in page.message, timeout=10_000)
    saved = list(tmp_path.glob("saved-*"))
    assert len(saved) == 1 and saved[0].stat().st_size == cached.stat().st_size


def test_cancel_from_the_context_menu_and_retry(qtbot, page, services, hub, local_node, make_clip):
    wait_for_event_stream(qtbot, hub)
    config = OutputConfig(resolution="720p", format="hevc")
    running = services.farm.submit([make_clip(1280, 720, 15.0)], config)[0].to_json()
    qtbot.waitUntil(
        lambda: status(page, running["id"]) == "active" and progress(page, running["id"]) > 0, timeout=30_000
    )
    waiting = services.farm.submit([make_clip()], OutputConfig())[0].to_json()  # the node runs one job at a time
    qtbot.waitUntil(lambda: status(page, waiting["id"]) == "queued", timeout=10_000)

    cancel = context_menu_action(qtbot, page, waiting["id"], "Cancel")
    assert cancel.isEnabled()
    cancel.trigger()
    qtbot.waitUntil(lambda: status(page, waiting["id"]) == "cancelled", timeout=10_000)
    assert f"Job {waiting['id'][:8]} cancelled" in page.message

    cancel = context_menu_action(qtbot, page, running["id"], "Cancel")
    assert cancel.isEnabled()
    assert not next(a for a in page.context_menu.actions() if a.text() == "Retry").isEnabled()
    cancel.trigger()
    qtbot.waitUntil(lambda: status(page, running["id"]) == "cancelled", timeout=20_000)
    assert services.farm.show(running["id"]).status == "cancelled"
    assert page.model.index(page.model.row_of(running["id"]), COL_PROGRESS).data(BAR_ENABLED_ROLE) is False

    retry = context_menu_action(qtbot, page, waiting["id"], "Retry")
    assert retry.isEnabled()
    retry.trigger()
    qtbot.waitUntil(lambda: f"Job {waiting['id'][:8]} requeued" in page.message, timeout=10_000)
    qtbot.waitUntil(lambda: status(page, waiting["id"]) == "completed", timeout=40_000)
    assert progress(page, waiting["id"]) == 100.0


# -- filters, sorting, details (no node needed) -------------------------------------------------------


def test_filters_sorting_details_and_select_job(qtbot, services, runner, hub, tmp_path):
    now = datetime.now(UTC)
    jobs = {
        name: add_job(services, name, created=now - timedelta(minutes=10 * i))
        for i, name in enumerate(["interview_a.mov", "B-roll_1.mp4", "interview_b.mov", "drone.mp4", "Interview_c.mxf"])
    }
    old = add_job(services, "archive.mp4", created=now - timedelta(days=3))
    db = services.farm.db
    failed = jobs["drone.mp4"]
    repo.mark_active(db, failed["id"], "node-x", 1)
    error = "FFmpeg failed: Invalid data found when processing input\nsecond line"
    repo.finish_job(
        db,
        failed["id"],
        "failed",
        attempt=1,
        error=error,
        log_tail="frame=  1 fps=0.0\n[h264] error while decoding MB 3 4\nInvalid data found",
    )
    repo.mark_active(db, jobs["B-roll_1.mp4"]["id"], "node-x", 1)
    repo.update_progress(db, jobs["B-roll_1.mp4"]["id"], 37)
    repo.mark_cancelled(db, jobs["interview_b.mov"]["id"], "cancelled by user")

    page = JobsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.setStyleSheet((Path(__file__).resolve().parents[2] / "resources" / "style.qss").read_text())
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    qtbot.waitUntil(lambda: page.model.rowCount() == 6, timeout=10_000)
    assert files(page)[0] == "interview_a.mov" and files(page)[-1] == "archive.mp4"  # newest first
    assert page.count_label.text() == "6 jobs"
    page.select_row(page.model.row_of(failed["id"]))
    page.show_message("Job 3f0c1d9e cancelled")
    page.grab().save(str(tmp_path / "jobs.png"))

    page.status_filter.setCurrentText("failed")
    qtbot.waitUntil(lambda: files(page) == ["drone.mp4"], timeout=5_000)
    page.status_filter.setCurrentText("All")
    qtbot.waitUntil(lambda: page.model.rowCount() == 6, timeout=5_000)
    generation = page.model.generation
    for typed in ("I", "IN", "INTERVIEW"):
        page.search.setText(typed)
    assert page.model.generation == generation  # debounced: no query per keystroke
    qtbot.waitUntil(lambda: files(page) == ["interview_a.mov", "interview_b.mov", "Interview_c.mxf"], timeout=5_000)
    page.search.setText(failed["id"][:8])
    qtbot.waitUntil(lambda: files(page) == ["drone.mp4"], timeout=5_000)
    page.search.clear()
    page.date_filter.setCurrentText("Today" if now.astimezone().hour >= 1 else "Last hour")
    qtbot.waitUntil(lambda: page.model.rowCount() == 5, timeout=5_000)
    assert "archive.mp4" not in files(page)
    page.date_filter.setCurrentText("Any time")
    qtbot.waitUntil(lambda: page.model.rowCount() == 6, timeout=5_000)

    # Sorting is the database's: click the File header, then again for the other way.
    header = page.table.horizontalHeader()

    def click_header(column):
        x = header.sectionViewportPosition(column) + header.sectionSize(column) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))

    by_name = ["archive.mp4", "B-roll_1.mp4", "drone.mp4", "interview_a.mov", "interview_b.mov", "Interview_c.mxf"]
    click_header(COL_FILE)
    qtbot.waitUntil(lambda: files(page) == by_name, timeout=5_000)
    click_header(COL_FILE)
    qtbot.waitUntil(lambda: files(page) == by_name[::-1], timeout=5_000)
    click_header(COL_NODE)  # not a database column: the order stays
    assert header.sortIndicatorSection() == COL_FILE and files(page) == by_name[::-1]

    # Events: progress moves one bar with no query; a burst of state events costs one read.
    tasks = []
    real_run = runner.run
    runner.run = lambda fn, *args, **kwargs: tasks.append(fn) or real_run(fn, *args, **kwargs)
    active = jobs["B-roll_1.mp4"]["id"]
    hub.job_event.emit(JobEvent("progress", active, "1-0", {"data": 64.5}))
    assert progress(page, active) == 64.5 and tasks == []
    repo.finish_job(db, active, "completed", attempt=1)
    for n in range(60):
        hub.job_event.emit(JobEvent("completed" if n % 2 else "active", active, f"2-{n}", {}))
    qtbot.waitUntil(lambda: status(page, active) == "completed", timeout=5_000)
    assert len(tasks) == 1

    # An action that no longer applies says why, in words, and the row catches up.
    stale = jobs["interview_a.mov"]["id"]  # completed behind the page's back: no event
    repo.mark_active(db, stale, "node-x", 1)
    repo.finish_job(db, stale, "completed", attempt=1)
    assert status(page, stale) == "queued"
    page.select_row(page.model.row_of(stale))
    page.act_cancel.trigger()
    qtbot.waitUntil(lambda: page.message.startswith(f"Could not cancel job {stale[:8]}"), timeout=5_000)
    assert "already completed" in page.message and page.message_bar.label.property("error") is True
    qtbot.waitUntil(lambda: status(page, stale) == "completed", timeout=5_000)
    runner.run = real_run

    # A reconnected event stream reloads the view (events may have been missed).
    resets = count_resets(page)
    hub.events_reconnected.emit()
    qtbot.waitUntil(lambda: resets == [1], timeout=5_000)

    # The error and log dialog: selectable text, the whole error.
    page.select_row(page.model.row_of(failed["id"]))
    assert page.act_details.isEnabled() and page.act_retry.isEnabled() and not page.act_open.isEnabled()
    page.act_details.trigger()
    qtbot.waitUntil(lambda: page.details_dialog is not None and page.details_dialog.isVisible(), timeout=5_000)
    dialog = page.details_dialog
    assert dialog.error_text.toPlainText() == error
    assert "error while decoding MB 3 4" in dialog.log_text.toPlainText()
    assert dialog.log_text.isReadOnly()
    assert dialog.log_text.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    dialog.copy_all()
    assert failed["id"] in QGuiApplication.clipboard().text()
    dialog.grab().save(str(tmp_path / "details.png"))
    dialog.close()

    # select_job clears a filter that hides the job.
    page.status_filter.setCurrentText("failed")
    qtbot.waitUntil(lambda: files(page) == ["drone.mp4"], timeout=5_000)
    page.select_job(old["id"])
    qtbot.waitUntil(lambda: [j["id"] for j in page.selected_jobs()] == [old["id"]], timeout=5_000)
    assert page.status_filter.currentText() == "All"


# -- paging ---------------------------------------------------------------------------------------


def test_ten_thousand_jobs_load_in_pages_without_freezing(qtbot, services, runner, hub):
    first = add_job(services, "seed.mp4")
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"bulk-{i:05}",
            "video_id": first["video"]["id"],
            "config": {"resolution": "720p", "format": "mp4"},
            "status": ("queued", "completed", "failed")[i % 3],
            "progress": 0.0,
            "priority": 0,
            "attempts": 0,
            "outputs": [],
            "created_at": now - timedelta(seconds=i + 1),
            "updated_at": now,
        }
        for i in range(10_000)
    ]
    with services.farm.db.session() as session:
        session.execute(sa.insert(Job), rows)

    gaps, last = [], [time.perf_counter()]

    def tick():
        moment = time.perf_counter()
        gaps.append(moment - last[0])
        last[0] = moment

    ticker = QTimer(interval=10)
    ticker.timeout.connect(tick)
    ticker.start()
    page = JobsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitUntil(lambda: page.model.rowCount() == PAGE_SIZE, timeout=10_000)
    assert page.count_label.text() == f"Showing {PAGE_SIZE} of 10,001 jobs"

    page.table.scrollToBottom()  # the view asks the model for more at the end
    qtbot.waitUntil(lambda: page.model.rowCount() == 2 * PAGE_SIZE, timeout=10_000)
    assert len(set(page.model.job_ids())) == 2 * PAGE_SIZE

    deep = "bulk-01500"  # on the 8th page: select_job loads pages until it is there
    page.select_job(deep)
    qtbot.waitUntil(lambda: [j["id"] for j in page.selected_jobs()] == [deep], timeout=20_000)
    assert page.model.rowCount() >= 1502 and page.model.row_of(deep) == 1501
    index = page.model.index(page.model.row_of(deep), COL_FILE)
    assert page.table.viewport().rect().intersects(page.table.visualRect(index))  # scrolled to it
    ticker.stop()
    assert gaps and max(gaps) < 0.5, f"the GUI thread stalled for {max(gaps) * 1000:.0f} ms"
