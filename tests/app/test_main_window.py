"""The whole panel on a real local farm: drop files on the window, watch them finish, get told."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app.main_window import MainWindow
from app.models.jobs_model import COL_STATUS


def _drop(widget, paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(QPoint(50, 50), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    widget.dropEvent(event)
    return event


def test_drop_two_videos_and_a_text_file_on_the_window(qtbot, services, runner, local_node, make_clip, tmp_path):
    window = MainWindow(services, runner)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    notices = []
    window.tray.notified.connect(lambda job_id, status, text: notices.append((job_id, status, text)))

    clips = [make_clip(640, 360, 2.0, name="scene_a.mp4"), make_clip(480, 270, 2.0, name="scene_b.mp4")]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    event = _drop(window, [*clips, notes])
    assert event.isAccepted()

    upload = window.pages["upload"]
    assert window.stack.currentWidget() is upload, "a drop anywhere opens the Upload page"
    qtbot.waitUntil(lambda: upload.upload_button.text() == "Upload 2 files", timeout=20_000)
    texts = [upload.model.index(r).data() for r in range(upload.model.rowCount())]
    statuses = [upload.model.index(r).data(upload.model.StatusRole) for r in range(upload.model.rowCount())]
    refused = [s for s in statuses if s.startswith("Refused:")]
    assert len(refused) == 1 and "not a video" in refused[0], (texts, statuses)

    qtbot.mouseClick(upload.upload_button, Qt.LeftButton)

    def queued() -> int:
        return sum(
            1
            for r in range(upload.model.rowCount())
            if upload.model.index(r).data(upload.model.StatusRole).startswith("Queued as job")
        )

    qtbot.waitUntil(lambda: queued() == 2, timeout=30_000)

    window.show_page("jobs")
    jobs = window.pages["jobs"]
    model = jobs.model

    def both_completed():
        return model.rowCount() == 2 and all(
            model.index(r, COL_STATUS).data() == "completed" and model.job(r)["progress"] == 100
            for r in range(model.rowCount())
        )

    qtbot.waitUntil(both_completed, timeout=90_000)
    qtbot.waitUntil(lambda: len(notices) == 2, timeout=15_000)
    assert {status for _, status, _ in notices} == {"completed"}
    assert {text.split(" is ready")[0] for _, _, text in notices} == {"scene_a.mp4", "scene_b.mp4"}
    if not window.tray.available:  # offscreen: the notices are shown in the window instead
        assert window.notice_bar.isVisibleTo(window) and "is ready" in window.notice_bar.text
    assert "Redis: connected" in window.status_labels["redis"].text()
    window.quit()


def test_status_bar_and_shortcuts(qtbot, services, runner):
    window = MainWindow(services, runner)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: "connected" in window.status_labels["database"].text(), timeout=15_000)
    qtbot.waitUntil(lambda: "connected" in window.status_labels["storage"].text(), timeout=15_000)
    qtbot.waitUntil(lambda: window.status_labels["redis"].text() == "Redis: connected", timeout=15_000)
    for index, key in enumerate(window.pages, start=1):
        qtbot.keyClick(window, Qt.Key(Qt.Key_0 + index), Qt.ControlModifier)
        assert window.stack.currentWidget() is window.pages[key], key
    window.quit()


def test_geometry_is_remembered(qtbot, services, runner):
    first = MainWindow(services, runner)
    qtbot.addWidget(first)
    first.show()
    first.resize(1000, 650)
    qtbot.waitUntil(lambda: first.height() == 650)
    first.quit()
    second = MainWindow(services, runner)
    qtbot.addWidget(second)
    # The offscreen screen is 800x800, so the restored width is clamped; the height is not.
    assert second.height() == 650
    second.hub.stop()
