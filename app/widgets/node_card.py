"""One farm node as a card: status badge, CPU and memory, running jobs, last seen, and its actions.

A card is built once per node and updated in place (``show_node``) on every poll. It does no I/O:
its buttons emit ``action_requested(name, state)`` and a click on the card emits ``clicked(name)``;
the Workers page does the rest.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.models.nodes_model import STATUS_COLORS, format_ago, job_label, short_list
from farm.domain.nodes import NodeStatus

CARD_WIDTH = 330

_CARD_STYLE = """
QFrame#nodeCard { background: #ffffff; border: 1px solid #dfe3ea; border-radius: 8px; }
QFrame#nodeCard:hover { border-color: #9fb7e0; }
QLabel#nodeName { font-size: 15px; font-weight: 600; color: #1f2430; }
QLabel#nodeMeta, QLabel#nodeCaption { color: #5b6475; }
QProgressBar { border: 1px solid #d5d9e0; border-radius: 4px; background: #f1f3f6; text-align: center;
               max-height: 14px; font-size: 11px; color: #1f2430; }
QProgressBar::chunk { border-radius: 3px; background: %(chunk)s; }
"""
_OFFLINE_STYLE = """
QFrame#nodeCard { background: #eceef1; border: 1px dashed #b9bec7; }
QFrame#nodeCard QLabel { color: #8a8f98; }
"""

# What each action is for, and when it makes sense.
_ACTIONS = (
    ("pause", "Pause", "Take no new jobs until resumed; running jobs finish."),
    ("run", "Resume", "Take jobs again."),
    ("drain", "Drain…", "Finish the running jobs, take no new ones, then stop the node."),
)
_ENABLED = {
    "idle": {"pause", "drain"},
    "busy": {"pause", "drain"},
    "paused": {"run", "drain"},
    "disk full": {"pause", "drain"},  # it takes jobs again by itself once there is room
    "draining": set(),  # it is on its way out; a restart brings it back running
    "offline": {"pause", "run"},  # remembered: the node comes back in that state
}


def enabled_actions(status: str) -> set[str]:
    """The desired states worth asking for a node in ``status``."""
    return set(_ENABLED.get(status, set()))


class NodeCard(QFrame):
    clicked = Signal(str)  # node name
    action_requested = Signal(str, str)  # node name, desired state: "pause", "run" or "drain"

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.node: NodeStatus | None = None
        self._status = ""
        self._offline: bool | None = None
        self.setObjectName("nodeCard")
        self.setFixedWidth(CARD_WIDTH)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Maximum)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setToolTip("Click (or press Enter) for this node's live CPU and memory charts")

        self.name_label = QLabel(name)
        self.name_label.setObjectName("nodeName")
        self.badge = QLabel()
        self.badge.setObjectName("statusBadge")
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.meta = QLabel()
        self.meta.setObjectName("nodeMeta")
        header = QHBoxLayout()
        header.addWidget(self.name_label, 1)
        header.addWidget(self.badge)

        self.cpu_bar = self._bar("CPU %p %")
        self.mem_bar = self._bar("Memory %p %")
        gauges = QGridLayout()
        gauges.setHorizontalSpacing(8)
        for row, (caption, bar) in enumerate((("CPU", self.cpu_bar), ("Memory", self.mem_bar))):
            label = QLabel(caption)
            label.setObjectName("nodeCaption")
            gauges.addWidget(label, row, 0)
            gauges.addWidget(bar, row, 1)
        gauges.setColumnStretch(1, 1)

        self.jobs_box = QVBoxLayout()
        self.jobs_box.setSpacing(2)
        self.idle_label = QLabel("No job running")
        self.idle_label.setObjectName("nodeCaption")
        self.jobs_box.addWidget(self.idle_label)
        self._job_rows: list[tuple[QLabel, QProgressBar]] = []

        self.last_seen = QLabel()
        self.last_seen.setObjectName("nodeMeta")
        self.encoders = QLabel()
        self.encoders.setObjectName("nodeMeta")
        self.tags = QLabel()
        self.tags.setObjectName("nodeMeta")
        for label in (self.meta, self.encoders, self.tags):
            label.setTextFormat(Qt.TextFormat.PlainText)

        self.buttons: dict[str, QPushButton] = {}
        actions = QHBoxLayout()
        for state, text, tip in _ACTIONS:
            button = QPushButton(text)
            button.setToolTip(tip)
            button.setCursor(Qt.CursorShape.ArrowCursor)
            button.clicked.connect(lambda _=False, s=state: self.action_requested.emit(self.name, s))
            self.buttons[state] = button
            actions.addWidget(button)
        actions.addStretch(1)

        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.hide()
        self.reason = QLabel()  # why the node takes no jobs, in the node's words ("disk full": how full)
        self.reason.setWordWrap(True)
        self.reason.setTextFormat(Qt.TextFormat.PlainText)
        self.reason.setStyleSheet("color: #b3261e;")
        self.reason.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(5)
        layout.addLayout(header)
        layout.addWidget(self.meta)
        layout.addWidget(self.reason)
        layout.addLayout(gauges)
        layout.addLayout(self.jobs_box)
        layout.addWidget(self.last_seen)
        layout.addWidget(self.encoders)
        layout.addWidget(self.tags)
        layout.addLayout(actions)
        layout.addWidget(self.note)
        self._set_offline(False)

    @staticmethod
    def _bar(fmt: str) -> QProgressBar:
        bar = QProgressBar()
        bar.setRange(0, 100)
        bar.setFormat(fmt)
        bar.setTextVisible(True)
        return bar

    # -- showing a node ---------------------------------------------------------------------------
    def show_node(self, node: NodeStatus, now: float | None = None) -> None:
        """Update every part of the card from the node's latest status (in place)."""
        self.node = node
        online = node.online
        self._set_status(node.status)
        self._set_offline(not online)
        slots = f"{node.concurrency} slot{'s' if node.concurrency != 1 else ''}"
        meta = (node.host or "unknown host", f"v{node.version}" if node.version else "", slots)
        self.meta.setText(" · ".join(part for part in meta if part))
        self.cpu_bar.setValue(round(node.cpu) if online else 0)
        self.mem_bar.setValue(round(node.memory * 100) if online else 0)
        self.cpu_bar.setFormat("%p %" if online else "–")
        self.mem_bar.setFormat("%p %" if online else "–")
        self._show_jobs(node.running if online else [])
        self.reason.setText(node.reason if online else "")
        self.reason.setVisible(bool(node.reason) and online)
        self.encoders.setText(f"Encoders: {short_list(node.encoders)}")
        self.encoders.setToolTip(", ".join(node.encoders) or "This node has not reported its encoders.")
        self.tags.setText(f"Tags: {short_list(node.tags, limit=5)}")
        self.tags.setVisible(bool(node.tags))
        if node.ffmpeg_version:
            self.meta.setToolTip(f"FFmpeg {node.ffmpeg_version}")
        for state, button in self.buttons.items():
            button.setEnabled(state in enabled_actions(node.status))
        self.update_last_seen(now)

    def update_last_seen(self, now: float | None = None) -> None:
        if self.node is None:
            return
        if not self.node.last_seen:
            text = "Never seen"
        else:
            text = f"Last seen {format_ago((now or time.time()) - self.node.last_seen)}"
        if not self.node.online:
            text += " — no heartbeat"
        self.last_seen.setText(text)

    def set_note(self, text: str, error: bool = False) -> None:
        """A line under the actions: a pending request, or what went wrong (``""`` hides it)."""
        self.note.setStyleSheet("color: #b3261e;" if error else "color: #5b6475; font-style: italic;")
        self.note.setText(text)
        self.note.setVisible(bool(text))

    @property
    def status(self) -> str:
        return self._status

    def job_rows(self) -> list[tuple[str, int]]:
        """(file name, progress) for each running job shown; what a user reads on the card."""
        return [(label.text(), bar.value()) for label, bar in self._job_rows if not label.isHidden()]

    # -- internals --------------------------------------------------------------------------------
    def _set_status(self, status: str) -> None:
        if status == self._status:
            return
        self._status = status
        color = STATUS_COLORS.get(status, STATUS_COLORS["offline"])
        self.badge.setText(status)
        self.badge.setStyleSheet(
            f"background: {color}; color: #ffffff; border-radius: 9px; padding: 2px 10px; font-weight: 600;"
        )

    def _set_offline(self, offline: bool) -> None:
        if offline == self._offline:
            return
        self._offline = offline
        chunk = STATUS_COLORS["busy"]
        self.setStyleSheet(_CARD_STYLE % {"chunk": chunk} + (_OFFLINE_STYLE if offline else ""))

    def _show_jobs(self, running: list[dict]) -> None:
        while len(self._job_rows) < len(running):
            label = QLabel()
            label.setTextFormat(Qt.TextFormat.PlainText)
            bar = self._bar("%p %")
            self.jobs_box.addWidget(label)
            self.jobs_box.addWidget(bar)
            self._job_rows.append((label, bar))
        for index, (label, bar) in enumerate(self._job_rows):
            if index < len(running):
                job = running[index]
                name = job_label(job)
                label.setText(self.fontMetrics().elidedText(name, Qt.TextElideMode.ElideMiddle, CARD_WIDTH - 30))
                label.setToolTip(f"{name}\njob {job.get('jobId', '?')}")
                bar.setValue(round(float(job.get("progress") or 0)))
            label.setVisible(index < len(running))
            bar.setVisible(index < len(running))
        self.idle_label.setVisible(not running)
        self.idle_label.setText("No job running" if self.node is None or self.node.online else "Not running jobs")

    # -- clicks -----------------------------------------------------------------------------------
    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit(self.name)
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self.clicked.emit(self.name)
            return
        super().keyPressEvent(event)
