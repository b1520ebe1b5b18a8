"""The Storage page on the real local farm's storage (a folder) and on moto's S3: the listing with
sizes, delete after confirmation, download with progress, a working link on the clipboard, and the
error in words when the storage cannot be listed."""

from __future__ import annotations

import urllib.request
from datetime import UTC

import pytest
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app.pages.storage_page import KEY_ROLE, StoragePage, build_tree
from farm.base.units import format_size
from farm.services.storage import StoredObject

OUTPUT_KEY = "outputs/job-1/clip_720p.mp4"
INPUT_KEY = "inputs/video-1/clip.mp4"


def rows(model) -> dict[str, tuple[str, str, str]]:
    """key -> (name, size, modified) as the cells show them, for every row of the tree."""
    found = {}

    def walk(parent):
        for row in range(model.rowCount(parent)):
            index = model.index(row, 0, parent)
            found[index.data(KEY_ROLE)] = tuple(model.index(row, c, parent).data() for c in range(3))
            walk(index)

    walk(model.index(-1, -1))
    return found


def select(page, key: str) -> None:
    def find(parent):
        for row in range(page.model.rowCount(parent)):
            index = page.model.index(row, 0, parent)
            if index.data(KEY_ROLE) == key:
                return index
            found = find(index)
            if found is not None:
                return found
        return None

    index = find(page.model.index(-1, -1))
    assert index is not None, f"{key} is not listed"
    page.view.selectionModel().select(index, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)


@pytest.fixture
def stored(services, tmp_path, clip):
    storage = services.farm.storage
    output = tmp_path / "out.mp4"
    output.write_bytes(b"x" * 2500)
    storage.upload_file(clip, INPUT_KEY)
    storage.upload_file(output, OUTPUT_KEY)
    return storage


@pytest.fixture
def page(qtbot, services, runner, hub, stored):
    page = StoragePage(services, runner, hub)
    qtbot.addWidget(page)
    page.refresh()
    qtbot.waitUntil(lambda: OUTPUT_KEY in rows(page.model), timeout=10_000)
    return page


def test_lists_objects_with_sizes(page, clip):
    listed = rows(page.model)
    assert listed["outputs"][0] == "outputs/"
    assert listed["outputs/job-1"][0] == "job-1/"
    assert listed[OUTPUT_KEY][:2] == ("clip_720p.mp4", "2.5 KB")
    assert listed[INPUT_KEY][:2] == ("clip.mp4", format_size(clip.stat().st_size))
    assert listed[OUTPUT_KEY][2][:2] == "20"  # a local date, 20xx-…
    assert page.summary.text().endswith(f"2 objects, {format_size(clip.stat().st_size + 2500)}")


def test_delete_asks_naming_the_object_then_deletes(qtbot, page, stored, monkeypatch):
    asked = []

    def question(parent, title, text, *args):
        asked.append(text)
        return QMessageBox.Yes

    monkeypatch.setattr(QMessageBox, "question", question)
    select(page, OUTPUT_KEY)
    qtbot.mouseClick(page.delete_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: OUTPUT_KEY not in rows(page.model), timeout=10_000)
    assert OUTPUT_KEY in asked[0]
    assert not stored.exists(OUTPUT_KEY)
    assert page.progress_label.text() == "Deleted 1 object."

    select(page, "inputs/video-1")  # a folder: its whole prefix goes
    qtbot.mouseClick(page.delete_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "inputs/video-1" not in rows(page.model), timeout=10_000)
    assert "inputs/video-1/ (the folder and its 1 object)" in asked[1]
    assert "jobs that still read these inputs will fail" in asked[1]
    assert list(stored.list("inputs")) == []


def test_delete_declined_keeps_the_object(qtbot, page, stored, monkeypatch):
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.No)
    select(page, OUTPUT_KEY)
    qtbot.mouseClick(page.delete_button, Qt.LeftButton)
    assert stored.exists(OUTPUT_KEY) and page.runner.busy == 0


def test_copy_link_puts_a_url_on_the_clipboard(qtbot, page):
    QGuiApplication.clipboard().clear()
    select(page, OUTPUT_KEY)
    qtbot.mouseClick(page.link_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text().startswith("file://"), timeout=10_000)
    with urllib.request.urlopen(QGuiApplication.clipboard().text()) as response:
        assert response.read() == b"x" * 2500
    assert "copied to the clipboard" in page.progress_label.text()


def test_download_file_and_folder_with_progress(qtbot, page, tmp_path, clip, monkeypatch):
    dest = tmp_path / "downloads" / "result.mp4"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kw: (str(dest), ""))
    select(page, OUTPUT_KEY)
    qtbot.mouseClick(page.download_button, Qt.LeftButton)
    assert not page.progress.isHidden()  # shown while the transfer runs
    qtbot.waitUntil(lambda: page.progress_label.text().startswith("Downloaded"), timeout=10_000)
    assert dest.read_bytes() == b"x" * 2500
    assert page.progress.isHidden()
    assert page.progress_label.text() == f"Downloaded 1 file (2.5 KB) to {dest}"

    folder = tmp_path / "all"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kw: str(folder))
    select(page, "inputs")
    qtbot.mouseClick(page.download_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: page.progress_label.text().startswith("Downloaded"), timeout=10_000)
    assert (folder / INPUT_KEY).read_bytes() == clip.read_bytes()


def test_storage_page_renders(qtbot, page, tmp_path):
    select(page, OUTPUT_KEY)
    page.view.expandAll()
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    assert page.grab().save(str(tmp_path / "storage.png"))


# -- S3 (moto) ---------------------------------------------------------------------------------


@pytest.fixture
def s3_services(s3_url, data_dir):
    from app.services import AppServices
    from farm.base.settings import Settings

    services = AppServices(Settings.load())
    yield services
    services.close()


def test_s3_listing_and_presigned_link(qtbot, s3_services, runner, tmp_path):
    source = tmp_path / "o.mp4"
    source.write_bytes(b"s3 bytes" * 100)
    s3_services.farm.storage.upload_file(source, OUTPUT_KEY)
    page = StoragePage(s3_services, runner, None)
    qtbot.addWidget(page)
    page.refresh()
    qtbot.waitUntil(lambda: OUTPUT_KEY in rows(page.model), timeout=15_000)
    assert rows(page.model)[OUTPUT_KEY][1] == "800 B"
    assert page.summary.text().startswith("s3://")

    QGuiApplication.clipboard().clear()
    select(page, OUTPUT_KEY)
    qtbot.mouseClick(page.link_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text().startswith("http"), timeout=10_000)
    assert "Signature" in QGuiApplication.clipboard().text()
    with urllib.request.urlopen(QGuiApplication.clipboard().text()) as response:
        assert response.read() == source.read_bytes()


def test_unreachable_storage_is_shown_in_words(qtbot, s3_services, runner, monkeypatch):
    from farm.services.storage import open_storage

    missing = open_storage("s3://ef-no-such-bucket-for-page")
    monkeypatch.setattr(s3_services.farm, "storage", missing)  # what a wrong bucket in Settings gives
    page = StoragePage(s3_services, runner, None)
    qtbot.addWidget(page)
    page.refresh()
    qtbot.waitUntil(lambda: not page.error.isHidden(), timeout=15_000)
    assert "Cannot list the storage: bucket 'ef-no-such-bucket-for-page' does not exist" in page.error.text()
    assert "Settings" in page.error.text()
    assert page.refresh_button.isEnabled()


def test_build_tree_totals():
    from datetime import datetime

    t1, t2 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    root = build_tree([StoredObject("a/b/x", 10, t1), StoredObject("a/y", 5, t2), StoredObject("z", 1, t1)])
    assert (root.size, root.count, root.modified) == (16, 3, t2)
    assert (root.folders["a"].size, root.folders["a"].folders["b"].prefix) == (15, "a/b")
    assert [o.key for o in root.folders["a"].objects()] == ["a/y", "a/b/x"]
