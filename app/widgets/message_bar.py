"""The panel's message bar: one line of news above a page (or the whole window), with Dismiss.

Errors are drawn in red and stay until dismissed or replaced. Other messages stay too, unless the
bar was given a ``timeout_ms``: then they go after that long (a "saved to …" note need not be
dismissed by hand), and ``sticky`` keeps one that reports work still under way.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

# Over the stylesheet's QLabel#notice (a calm yellow), for messages that report a failure.
ERROR_STYLE = (
    "QLabel#notice { background: #fdecea; border: 1px solid #f1b7b1; border-radius: 6px;"
    " padding: 6px 10px; color: #8a1c12; }"
)


class MessageBar(QWidget):
    shown = Signal(str, bool)  # text, is_error

    def __init__(self, parent: QWidget | None = None, *, timeout_ms: int | None = None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.label.setObjectName("notice")
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # messages quote names from users and the queue
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.clear)
        row.addWidget(self.label, 1)
        row.addWidget(self.dismiss_button)
        self._timer: QTimer | None = None
        if timeout_ms is not None:
            self._timer = QTimer(self)
            self._timer.setSingleShot(True)
            self._timer.setInterval(timeout_ms)
            self._timer.timeout.connect(self.clear)
        self.hide()

    def show_message(self, text: str, *, error: bool = False, sticky: bool = False) -> None:
        self.label.setText(text)
        self.label.setProperty("error", error)
        self.label.setStyleSheet(ERROR_STYLE if error else "")
        self.show()
        if self._timer is not None:
            if error or sticky:
                self._timer.stop()
            else:
                self._timer.start()
        self.shown.emit(text, error)

    def clear(self) -> None:
        self.label.clear()
        self.hide()

    @property
    def text(self) -> str:
        """What the bar says now ("" when it is hidden)."""
        return "" if self.isHidden() else self.label.text()
