"""The system tray: a tooltip with the queue, notices when jobs finish, show / pause / quit.

Where the desktop has no tray (or under tests' offscreen platform), the same notices go to the
window instead (``notice`` signal), so nothing the user should see is lost.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.preferences import Preferences
from farm.domain.job import Job


class TrayNotifier(QObject):
    notified = Signal(str, str, str)  # job id, status, text — every notice, tray or not
    notice = Signal(str)  # for the window when there is no tray
    open_job = Signal(str)  # the user clicked a notice
    show_window = Signal()
    quit_requested = Signal()

    def __init__(self, services, runner, hub, icon: QIcon, parent=None):
        super().__init__(parent)
        self.services, self.runner = services, runner
        self.paused = False
        self.last_job: str | None = None
        self.tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(icon, self)
            menu = QMenu()
            menu.addAction("Show EncodeFlow", self.show_window.emit)
            self.pause_action = QAction("Pause notifications", menu, checkable=True)
            self.pause_action.toggled.connect(self._set_paused)
            menu.addAction(self.pause_action)
            menu.addSeparator()
            menu.addAction("Quit", self.quit_requested.emit)
            self._menu = menu
            self.tray.setContextMenu(menu)
            self.tray.messageClicked.connect(self._clicked)
            self.tray.activated.connect(
                lambda reason: self.show_window.emit() if reason == QSystemTrayIcon.ActivationReason.Trigger else None
            )
            self.tray.show()
        self.tooltip = "EncodeFlow"
        self._set_tooltip({})
        hub.job_event.connect(self._on_event)
        hub.counts_updated.connect(self._set_tooltip)

    @property
    def available(self) -> bool:
        return self.tray is not None

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused

    def _set_tooltip(self, counts: dict) -> None:
        self.tooltip = (
            f"EncodeFlow — {counts.get('active', 0)} running, "
            f"{counts.get('waiting', 0) + counts.get('delayed', 0)} queued"
        )
        if self.tray is not None:
            self.tray.setToolTip(self.tooltip)

    def _on_event(self, event) -> None:
        if event.event not in ("completed", "failed") or not event.job_id:
            return
        prefs = Preferences()
        wanted = prefs.notify_completed if event.event == "completed" else prefs.notify_failed
        # Settings.notifications is the master switch (config file); the kinds are per desktop.
        if self.paused or not wanted or not self.services.settings.notifications:
            return
        self.runner.run(
            lambda: self.services.farm.show(event.job_id), self._announce, lambda exc: None
        )  # a job another farm client removed: nothing to say

    def _announce(self, job: Job) -> None:
        name = (job.video.name if job.video else None) or job.id
        if job.status == "completed":
            config = job.config
            title, text = "Transcode finished", f"{name} is ready ({config.get('resolution')} {config.get('format')})"
            icon = QSystemTrayIcon.MessageIcon.Information
        elif job.status == "cancelled":
            return
        else:
            title, text = "Transcode failed", f"{name}: {job.error or 'unknown error'}"
            icon = QSystemTrayIcon.MessageIcon.Warning
        self.last_job = job.id
        if self.tray is not None:
            self.tray.showMessage(title, text, icon, 8000)
        else:
            self.notice.emit(f"{title}: {text}")
        self.notified.emit(job.id, job.status, text)

    def _clicked(self) -> None:
        if self.last_job:
            self.open_job.emit(self.last_job)
        self.show_window.emit()

    def hide(self) -> None:
        if self.tray is not None:
            self.tray.hide()
