"""The message bar the window and the pages share: Dismiss, errors in red, notes that go by themselves."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

from app.widgets.message_bar import MessageBar


def hosted(qtbot, **kwargs) -> tuple[QWidget, MessageBar]:
    """The bar in a shown window (the caller keeps the window, which owns the bar)."""
    host = QWidget()
    qtbot.addWidget(host)
    bar = MessageBar(**kwargs)
    QVBoxLayout(host).addWidget(bar)
    host.show()
    return host, bar


def test_a_message_shows_until_dismissed(qtbot):
    _host, bar = hosted(qtbot)
    assert bar.text == "" and not bar.isVisible()
    bar.show_message("Transcode finished: <b>a.mp4</b> is ready")
    assert bar.isVisible() and bar.text == "Transcode finished: <b>a.mp4</b> is ready"
    assert bar.label.textFormat() == Qt.TextFormat.PlainText  # a file name is not markup
    assert bar.label.property("error") is False
    qtbot.mouseClick(bar.dismiss_button, Qt.MouseButton.LeftButton)
    assert not bar.isVisible() and bar.text == ""


def test_with_a_timeout_notes_go_by_themselves_and_errors_and_sticky_ones_stay(qtbot):
    _host, bar = hosted(qtbot, timeout_ms=50)
    shown = []
    bar.shown.connect(lambda text, error: shown.append((text, error)))
    bar.show_message("Saved the output")
    qtbot.waitUntil(lambda: not bar.isVisible(), timeout=2_000)
    bar.show_message("Could not cancel", error=True)
    assert bar.label.property("error") is True and "#fdecea" in bar.label.styleSheet()
    qtbot.wait(200)
    assert bar.text == "Could not cancel"
    bar.show_message("Downloading…", sticky=True)
    qtbot.wait(200)
    assert bar.text == "Downloading…" and bar.label.styleSheet() == ""
    assert shown == [("Saved the output", False), ("Could not cancel", True), ("Downloading…", False)]
