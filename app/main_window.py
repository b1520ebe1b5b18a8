"""The main window: a sidebar of pages, a status bar with each service's state, the tray.

The window builds the pages (handing each the services, the runner and the hub), starts the hub's
listener threads when shown and stops them when closed, and remembers its geometry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.hub import FarmHub
from app.pages.dashboard_page import DashboardPage
from app.pages.jobs_page import JobsPage
from app.pages.metrics_page import MetricsPage
from app.pages.settings_page import SettingsPage
from app.pages.storage_page import StoragePage
from app.pages.upload_page import UploadPage
from app.pages.workers_page import WorkersPage
from app.preferences import Preferences
from app.tray import TrayNotifier
from app.widgets.drop_zone import accepts_drag, local_paths
from app.widgets.message_bar import MessageBar
from farm.services.checks import check_database, check_storage

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SERVICE_CHECK_MS = 15_000


def app_icon() -> QIcon:
    return QIcon(str(RESOURCES / "icons" / "encodeflow.svg"))


class MainWindow(QMainWindow):
    closed = Signal()

    def __init__(self, services, runner, hub: FarmHub | None = None, parent=None):
        super().__init__(parent)
        self.services, self.runner = services, runner
        self.hub = hub or FarmHub(services, parent=self)
        self.quitting = False
        self.setWindowTitle("EncodeFlow")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)

        self.upload_page = UploadPage(services, runner, self.hub)
        self.jobs_page = JobsPage(services, runner, self.hub)
        self.settings_page = SettingsPage(services, runner, self.hub)
        # Each a QWidget with a ``title`` (and, where it has something to load, ``refresh``).
        self.pages: dict[str, Any] = {
            "dashboard": DashboardPage(services, runner, self.hub),
            "upload": self.upload_page,
            "jobs": self.jobs_page,
            "workers": WorkersPage(services, runner, self.hub),
            "metrics": MetricsPage(services, runner, self.hub),
            "storage": StoragePage(services, runner, self.hub),
            "settings": self.settings_page,
        }
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(190)
        self.stack = QStackedWidget()
        for index, (key, page) in enumerate(self.pages.items(), start=1):
            item = QListWidgetItem(f"{page.title}")
            item.setToolTip(f"{page.title} (Ctrl+{index})")
            self.sidebar.addItem(item)
            self.stack.addWidget(page)
            show = QAction(page.title, self, shortcut=QKeySequence(f"Ctrl+{index}"))
            show.triggered.connect(lambda _=False, k=key: self.show_page(k))
            self.addAction(show)
        add_files = QAction("Add files…", self, shortcut=QKeySequence(QKeySequence.StandardKey.Open))
        add_files.triggered.connect(self.add_files)
        self.addAction(add_files)
        self.sidebar.currentRowChanged.connect(self._row_changed)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        brand = QLabel("EncodeFlow")
        brand.setObjectName("brand")
        left_layout.addWidget(brand)
        left_layout.addWidget(self.sidebar, 1)
        self.notice_bar = MessageBar()
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(16, 8, 16, 8)
        right_layout.addWidget(self.notice_bar)
        right_layout.addWidget(self.stack, 1)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(left)
        layout.addWidget(right, 1)
        self.setCentralWidget(central)

        self.status_labels = {name: QLabel(f"{name.title()}: …") for name in ("redis", "database", "storage")}
        for label in self.status_labels.values():
            self.statusBar().addPermanentWidget(label)
        self.hub.connection_changed.connect(self.set_connection)
        self.service_timer = QTimer(self, interval=SERVICE_CHECK_MS)
        self.service_timer.timeout.connect(self.check_services)

        self.tray = TrayNotifier(services, runner, self.hub, app_icon(), self)
        self.tray.notice.connect(self.show_notice)
        self.tray.open_job.connect(self.open_job)
        self.tray.show_window.connect(self.bring_to_front)
        self.tray.quit_requested.connect(self.quit)
        self.upload_page.job_activated.connect(self.open_job)
        self.settings_page.settings_saved.connect(self.apply_settings)

        self.restore_geometry()
        self.show_page("dashboard")

    # -- pages ----------------------------------------------------------------------------------------
    def show_page(self, key: str) -> None:
        self.sidebar.setCurrentRow(list(self.pages).index(key))

    def _row_changed(self, row: int) -> None:
        self.stack.setCurrentIndex(row)
        page: Any = self.stack.currentWidget()  # one of self.pages, or None
        if hasattr(page, "refresh"):
            page.refresh()

    def add_files(self) -> None:
        self.show_page("upload")
        self.upload_page.choose_files()

    def open_job(self, job_id: str) -> None:
        self.show_page("jobs")
        self.jobs_page.select_job(job_id)
        self.bring_to_front()

    def bring_to_front(self) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    # -- drops anywhere on the window -----------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if accepts_drag(event):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if accepts_drag(event):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.show_page("upload")
            self.upload_page.add_paths(paths)

    # -- notices and status ---------------------------------------------------------------------------
    def show_notice(self, text: str) -> None:
        self.notice_bar.show_message(text)

    def set_connection(self, service: str, ok: bool, message: str) -> None:
        label = self.status_labels[service]
        label.setText(f"{service.title()}: {'connected' if ok else 'unreachable'}")
        label.setStyleSheet(f"color: {'#2e7d32' if ok else '#c62828'};")
        label.setToolTip(message or ("connected" if ok else ""))

    def check_services(self) -> None:
        settings = self.services.settings
        for name, check, url in (
            ("database", check_database, settings.effective_database_url),
            ("storage", check_storage, settings.effective_storage_url),
        ):
            self.runner.run(
                lambda c=check, u=url: c(u),
                lambda result, n=name: self.set_connection(n, result.ok, result.message),
                lambda exc, n=name: self.set_connection(n, False, str(exc)),
            )

    def apply_settings(self, settings) -> None:
        self.services.replace_settings(settings)
        self.hub.restart()
        self.check_services()
        self.show_notice("Settings saved. The panel now uses them; restart farm nodes to apply them there.")

    # -- lifecycle ------------------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.hub.start()
        self.check_services()
        self.service_timer.start()

    def closeEvent(self, event) -> None:
        if not self.quitting and self.tray.available and Preferences().close_to_tray:
            event.ignore()
            self.hide()
            return
        if not self.confirm_quit():
            event.ignore()
            self.quitting = False
            return
        self.save_geometry()
        self.service_timer.stop()
        self.hub.stop()
        self.tray.hide()
        super().closeEvent(event)
        self.closed.emit()

    def quit(self) -> None:
        self.quitting = True
        self.close()

    def confirm_quit(self) -> bool:
        """Uploads in flight are lost on quit: ask first, then cancel them cleanly."""
        upload = self.upload_page
        if not upload.has_active_uploads():
            return True
        answer = QMessageBox.question(self, "Quit EncodeFlow", "Uploads are still running. Quit and cancel them?")
        if answer != QMessageBox.StandardButton.Yes:
            return False
        upload.cancel_all()
        return True

    def restore_geometry(self) -> None:
        saved = QSettings("EncodeFlow", "EncodeFlow").value("window/geometry")
        if saved is None or not self.restoreGeometry(saved):
            self.resize(1200, 760)

    def save_geometry(self) -> None:
        QSettings("EncodeFlow", "EncodeFlow").setValue("window/geometry", self.saveGeometry())
