"""The Upload page on a real local farm: drops, probing, thumbnails, uploads, cancel, presets."""

from __future__ import annotations

import shutil
import threading

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QInputDialog

from app.models.upload_list_model import UploadListModel
from app.pages.upload_page import UploadPage
from app.uploads import _Meter
from app.widgets.drop_zone import local_paths
from farm.domain.jobspec import OutputConfig, PresetStore
from farm.domain.media import NotAVideoError, probe


@pytest.fixture
def page(services, runner, hub, qtbot):
    page = UploadPage(services, runner, hub)
    qtbot.addWidget(page)
    yield page
    page.cancel_all()
    qtbot.waitUntil(lambda: not page.has_active_uploads(), timeout=20_000)


def drop(widget, paths) -> None:
    """What a file manager does: a drag enters the widget, then drops file URLs on it."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = widget.rect().center()
    enter = QDragEnterEvent(
        pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the drag was refused"
    event = QDropEvent(
        QPointF(pos), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, event)
    assert event.isAccepted(), "the drop was refused"


def rows(page) -> dict[str, dict]:
    model = page.model
    out = {}
    for number in range(model.rowCount()):
        index = model.index(number)
        out[index.data()] = {
            "status": index.data(UploadListModel.StatusRole),
            "details": index.data(UploadListModel.DetailsRole),
            "thumbnail": index.data(UploadListModel.ThumbnailRole),
            "progress": index.data(UploadListModel.ProgressRole),
            "tone": index.data(UploadListModel.ToneRole),
        }
    return out


def all_checked(page, count: int) -> bool:
    found = rows(page)
    return len(found) == count and all(r["status"] != "Checking…" for r in found.values())


def test_drop_two_videos_and_a_text_file_uploads_the_videos(page, services, local_node, make_clip, tmp_path, qtbot):
    wide = make_clip(320, 240, 2.0, name="interview.mp4")
    tall = make_clip(240, 320, 1.0, audio=False, name="phone.mp4")
    notes = tmp_path / "notes.txt"
    notes.write_text("shot list\n1. wide\n2. close\n")
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)

    drop(page.drop_zone, [wide, notes, tall])
    qtbot.waitUntil(lambda: all_checked(page, 3), timeout=15_000)

    found = rows(page)
    with pytest.raises(NotAVideoError) as refusal:
        probe(notes)
    assert found["notes.txt"]["status"] == f"Refused: {refusal.value}"
    assert found["notes.txt"]["tone"] == "warning"
    assert found["interview.mp4"]["status"] == "Ready"
    assert found["interview.mp4"]["details"].startswith("0:02 · 320×240 · h264 / aac · ")
    assert found["phone.mp4"]["details"].startswith("0:01 · 240×320 · h264 / no audio · ")
    for name, width in (("interview.mp4", 168), ("phone.mp4", 94)):  # 4:3 and 3:4 in a 224x126 box
        image = found[name]["thumbnail"]
        assert image is not None and image.height() == 126 and abs(image.width() - width) <= 1
        assert image.pixelColor(image.width() // 2, image.height() // 2).lightness() > 0
    assert page.upload_button.text() == "Upload 2 files" and page.upload_button.isEnabled()
    page.grab().save(str(tmp_path / "upload_ready.png"))

    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("360p-proxy"))
    submitted = []
    page.job_submitted.connect(submitted.append)
    qtbot.mouseClick(page.upload_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(submitted) == 2, timeout=20_000)

    found = rows(page)
    by_name = {job["video"]["name"]: job for job in submitted}
    assert set(by_name) == {"interview.mp4", "phone.mp4"}
    for name, job in by_name.items():
        assert found[name]["status"] == f"Queued as job {job['id'][:8]}"
        assert found[name]["tone"] == "ok"
        stored = services.farm.show(job["id"])
        assert stored.config["resolution"] == "360p"
    assert page.upload_button.text() == "Upload" and not page.upload_button.isEnabled()
    assert page.summary.text() == "3 files · 1 refused · 2 queued"

    def completed() -> bool:
        return all(services.farm.show(job["id"]).status == "completed" for job in submitted)

    qtbot.waitUntil(completed, timeout=60_000)
    assert len(services.farm.jobs()) == 2  # the text file made no job
    page.grab().save(str(tmp_path / "upload_done.png"))


def test_a_dropped_folder_expands_to_the_videos_inside(page, make_clip, tmp_path, qtbot):
    card = tmp_path / "CARD01"
    (card / "CLIPS" / "B").mkdir(parents=True)
    shutil.copy(make_clip(320, 240, 1.0), card / "A001.mp4")
    shutil.copy(make_clip(320, 240, 1.0), card / "CLIPS" / "B" / "B002.MOV")
    shutil.copy(make_clip(320, 240, 1.0), card / ".A001.mp4")  # a hidden copy a Mac leaves behind
    (card / "CLIPS" / "B" / "B002.xml").write_text("<clip/>")

    drop(page, [card])  # on the page, not on the drop zone: drops anywhere are taken
    qtbot.waitUntil(lambda: all_checked(page, 2), timeout=15_000)

    assert {name: r["status"] for name, r in rows(page).items()} == {"A001.mp4": "Ready", "B002.MOV": "Ready"}
    assert page.summary.text() == "2 files · 2 ready"

    web = QMimeData()
    web.setUrls([QUrl("https://example.com/clip.mp4")])
    assert local_paths(web) == []  # only local files are taken from a drag

    drop(page.drop_zone, [card / "A001.mp4"])  # dropped again while listed: not listed twice
    qtbot.waitUntil(lambda: page.notice.text() == "Already in the list: A001.mp4", timeout=5_000)
    assert page.model.rowCount() == 2


def test_cancelling_one_upload_leaves_nothing_for_it_and_the_other_finishes(page, services, make_clip, tmp_path, qtbot):
    """Uploads are held to a fixed rate (the controller's bandwidth limit), so there is time to click
    Cancel half-way on any machine; the local storage backend checks the cancel flag between chunks."""
    source = make_clip(1280, 720, 4.0, name="big.mp4")
    first, second = tmp_path / "take1.mp4", tmp_path / "take2.mp4"
    shutil.copy(source, first)
    shutil.copy(source, second)
    size = source.stat().st_size
    assert size > 2_000_000, "the clip should span several 1 MB chunks"
    page.uploads.rate_limit = size / 3  # about three seconds per upload
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    drop(page.drop_zone, [first, second])
    qtbot.waitUntil(lambda: all_checked(page, 2), timeout=15_000)

    qtbot.mouseClick(page.upload_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: 0 < rows(page)["take1.mp4"]["progress"] < 100, timeout=10_000)
    assert rows(page)["take1.mp4"]["status"].startswith("Uploading ")
    assert rows(page)["take1.mp4"]["status"].endswith(" MB/s")
    page.grab().save(str(tmp_path / "upload_progress.png"))
    index = page.model.index(0)
    assert index.data() == "take1.mp4"
    button = page.delegate.cancel_rect(page.view.visualRect(index))
    qtbot.mouseClick(page.view.viewport(), Qt.MouseButton.LeftButton, pos=button.center())

    qtbot.waitUntil(lambda: rows(page)["take1.mp4"]["status"] == "Cancelled", timeout=5_000)
    assert rows(page)["take2.mp4"]["status"].startswith(("Uploading", "Uploaded"))
    qtbot.waitUntil(lambda: rows(page)["take2.mp4"]["status"].startswith("Queued as job"), timeout=15_000)

    jobs = services.farm.jobs()
    assert [job.video.name for job in jobs] == ["take2.mp4"]
    stored = [obj.key for obj in services.farm.stored_objects("inputs")]
    assert len(stored) == 1 and stored[0].endswith("/take2.mp4")


def test_progress_is_throttled_to_about_ten_updates_a_second():
    sent = []
    meter = _Meter(lambda *args: sent.append(args), key=7, cancel=threading.Event(), rate_limit=None)
    total = 10_000_000
    for done in range(0, total + 1, 1000):  # ten thousand chunk callbacks in a few milliseconds
        meter(None, done, total)
    assert len(sent) <= 2 and sent[-1][:3] == (7, total, total)  # the end is always reported


def test_save_as_preset_lists_it_and_keeps_it_in_presets_toml(page, services, runner, hub, qtbot):
    form = page.form
    form.resolution_combo.setCurrentIndex(form.resolution_combo.findData("480p"))
    form.format_combo.setCurrentIndex(form.format_combo.findData("webm"))
    form.audio_check.setChecked(False)
    assert form.preset_combo.currentText() == "Custom"

    def answer_dialog():
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, QInputDialog)
        dialog.setTextValue("Phone proxies")
        dialog.accept()

    QTimer.singleShot(0, answer_dialog)
    qtbot.mouseClick(form.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: form.preset_combo.currentText() == "Phone proxies (yours)", timeout=5_000)
    assert form.message.text() == "Saved preset “Phone proxies”."

    expected = OutputConfig("480p", "webm", include_audio=False)
    assert PresetStore(services.settings.data_dir / "presets.toml").get("Phone proxies") == expected

    # A fresh page (the next run of the app) lists it too, and choosing it fills the fields.
    again = UploadPage(services, runner, hub)
    qtbot.addWidget(again)
    combo = again.form.preset_combo
    qtbot.waitUntil(lambda: combo.findData("Phone proxies") >= 0, timeout=5_000)
    combo.setCurrentIndex(combo.findData("Phone proxies"))
    assert again.form.config() == expected

    form.save_preset("720p-mp4")
    assert form.message.isVisible() or form.message.text()
    assert form.message.text() == "“720p-mp4” is a built-in preset; pick another name."
