"""Settings: where the farm's services are, S3 credentials, notifications, the default preset.

The services' URLs, the queue, the default preset, "keep the local farm running" and the
notifications master switch go to the config file that the CLI and the nodes read
(``Settings.save``). The per-kind notification and close-to-tray choices are the panel's own and
live in ``QSettings`` (``app.preferences``). S3 credentials go to the system keyring
(``app.credentials``).

Save checks Redis, the database and storage first (``farm.services.checks``, in the background runner) and
writes nothing unless all of them answer; the checks' words appear next to each field.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app import credentials
from app.preferences import Preferences
from app.widgets.url_edit import UrlEdit
from farm.base.settings import DEFAULT_QUEUE, ENV_VARS, Settings, SettingsError, default_config_path
from farm.services.checks import CheckResult, check_database, check_prometheus, check_redis, check_storage

OK_STYLE = "color: #1e7d32;"
ERROR_STYLE = "color: #b3261e;"
BUSY_STYLE = "color: #5b6475;"
SERVICES = ("redis", "database", "storage", "prometheus")
LABELS = {"redis": "Redis", "database": "Database", "storage": "Storage", "prometheus": "Prometheus"}


def set_result(label: QLabel, result: CheckResult | None, busy_text: str = "") -> None:
    """Show a check's outcome in words: green with what was found, red with the exact error."""
    if result is None:
        label.setText(busy_text)
        label.setStyleSheet(BUSY_STYLE)
        label.setVisible(bool(busy_text))
        return
    mark = "✓" if result.ok else "✗"
    label.setText(f"{mark} {result.message}")
    label.setStyleSheet(OK_STYLE if result.ok else ERROR_STYLE)
    label.setVisible(True)


class SettingsPage(QWidget):
    title = "Settings"
    settings_saved = Signal(object)  # farm.base.settings.Settings, as written to the config file

    def __init__(self, services, runner, hub, parent=None, *, preferences: Preferences | None = None):
        super().__init__(parent)
        self.setObjectName("page")
        self.services, self.runner, self.hub = services, runner, hub
        self.preferences = preferences or Preferences()
        self.keyring_ok = False
        self._stored_credentials: credentials.S3Credentials | None = None
        self._dirty = False
        self._saving = False

        outer = QVBoxLayout(self)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        outer.addWidget(heading)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        body.setObjectName("page")
        grid = QGridLayout(body)
        grid.setContentsMargins(0, 0, 8, 0)
        grid.addWidget(self._build_services(), 0, 0, 1, 3)
        grid.addWidget(self._build_credentials(), 1, 0)
        grid.addWidget(self._build_notifications(), 1, 1)
        grid.addWidget(self._build_jobs(), 1, 2)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setColumnStretch(2, 2)
        grid.setRowStretch(2, 1)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        outer.addLayout(self._build_save_bar())

        self.load_from(self.services.settings)
        self.refresh()

    # -- building ----------------------------------------------------------------------------
    def _build_services(self) -> QGroupBox:
        box = QGroupBox("Farm services")
        layout = QGridLayout(box)
        layout.setColumnStretch(1, 1)
        self.url_edits: dict[str, UrlEdit] = {}
        self.test_buttons: dict[str, QPushButton] = {}
        self.results: dict[str, QLabel] = {}
        row = 0
        for service in SERVICES:
            edit = UrlEdit()
            edit.setObjectName(f"{service}Url")
            edit.setClearButtonEnabled(True)
            edit.textEdited.connect(lambda _text, s=service: self._edited(s))
            button = QPushButton("Test")
            button.setObjectName(f"test_{service}")
            button.setToolTip(f"Connect to the {LABELS[service].lower()} now and report what answers")
            button.clicked.connect(lambda _checked=False, s=service: self.test(s))
            result = QLabel()
            result.setObjectName(f"{service}Result")
            result.setWordWrap(True)
            result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            result.hide()
            self.url_edits[service], self.test_buttons[service], self.results[service] = edit, button, result
            optional = " (optional)" if service == "prometheus" else ""
            layout.addWidget(QLabel(f"{LABELS[service]} URL{optional}"), row, 0)
            layout.addWidget(edit, row, 1)
            if service == "storage":
                folder = QPushButton("Folder…")
                folder.setToolTip("Choose a local folder or NAS mount for the storage")
                folder.clicked.connect(self._choose_storage_folder)
                buttons = QHBoxLayout()
                buttons.addWidget(folder)
                buttons.addWidget(button)
                layout.addLayout(buttons, row, 2)
            else:
                layout.addWidget(button, row, 2)
            layout.addWidget(result, row + 1, 1, 1, 2)
            row += 2

        self.queue_edit = QLineEdit()
        self.queue_edit.setObjectName("queue")
        self.queue_edit.setPlaceholderText(f"empty: {DEFAULT_QUEUE}")
        self.queue_edit.textEdited.connect(lambda _text: self._mark_dirty())
        layout.addWidget(QLabel("Queue name"), row, 0)
        layout.addWidget(self.queue_edit, row, 1)
        row += 1
        hint = QLabel(
            "Leave a URL empty to use the built-in default shown in the field. Save tests Redis, the "
            "database and storage (and Prometheus, if set) first and saves only when all of them answer."
        )
        hint.setWordWrap(True)
        hint.setObjectName("statLabel")
        layout.addWidget(hint, row, 0, 1, 3)
        row += 1
        self.env_notice = QLabel()
        self.env_notice.setObjectName("notice")
        self.env_notice.setWordWrap(True)
        self.env_notice.hide()
        layout.addWidget(self.env_notice, row, 0, 1, 3)
        return box

    def _build_credentials(self) -> QGroupBox:
        box = QGroupBox("S3 credentials")
        layout = QVBoxLayout(box)
        self.keyring_label = QLabel("Looking for the system keyring…")
        self.keyring_label.setObjectName("keyringStatus")
        self.keyring_label.setWordWrap(True)
        layout.addWidget(self.keyring_label)
        form = QFormLayout()
        self.key_id_edit = QLineEdit()
        self.key_id_edit.setObjectName("accessKeyId")
        self.secret_edit = QLineEdit()
        self.secret_edit.setObjectName("secretAccessKey")
        self.secret_edit.setEchoMode(QLineEdit.EchoMode.Password)
        for edit in (self.key_id_edit, self.secret_edit):
            edit.setEnabled(False)
            edit.textEdited.connect(lambda _text: self._mark_dirty())
        form.addRow("Access key id", self.key_id_edit)
        form.addRow("Secret access key", self.secret_edit)
        layout.addLayout(form)
        layout.addStretch(1)
        return box

    def _build_notifications(self) -> QGroupBox:
        box = QGroupBox("Notifications and tray")
        layout = QVBoxLayout(box)
        self.notifications_check = QCheckBox("Show desktop notifications")
        self.notify_completed_check = QCheckBox("when a job completes")
        self.notify_failed_check = QCheckBox("when a job fails")
        self.close_to_tray_check = QCheckBox("Closing the window keeps the app in the tray")
        self.keep_farm_check = QCheckBox("Keep the local farm running after quitting")
        self.keep_farm_check.setToolTip(
            "The embedded Redis and the local node keep working on queued jobs after the app quits"
        )
        for check in (self.notify_completed_check, self.notify_failed_check):
            check.setStyleSheet("margin-left: 20px;")
        self.notifications_check.toggled.connect(self._master_toggled)
        for check in (
            self.notifications_check,
            self.notify_completed_check,
            self.notify_failed_check,
            self.close_to_tray_check,
            self.keep_farm_check,
        ):
            check.toggled.connect(lambda _on: self._mark_dirty())
            layout.addWidget(check)
        layout.addStretch(1)
        return box

    def _build_jobs(self) -> QGroupBox:
        box = QGroupBox("New jobs")
        layout = QFormLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("defaultPreset")
        self.preset_combo.setToolTip("The preset the Upload page starts with; None keeps its last choice")
        self.preset_combo.activated.connect(lambda _index: self._mark_dirty())
        layout.addRow("Default preset", self.preset_combo)
        return box

    def _build_save_bar(self) -> QHBoxLayout:
        bar = QHBoxLayout()
        self.status = QLabel()
        self.status.setObjectName("saveStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Show the settings in use again, dropping unsaved changes")
        self.revert_button.clicked.connect(self.revert)
        self.save_button = QPushButton("Save")
        self.save_button.setObjectName("save")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save)
        bar.addWidget(self.status, 1)
        bar.addWidget(self.revert_button)
        bar.addWidget(self.save_button)
        return bar

    # -- showing settings --------------------------------------------------------------------
    def load_from(self, settings: Settings) -> None:
        """Fill the fields from ``settings`` (no I/O: the keyring and presets come from refresh())."""
        self.url_edits["redis"].set_url(settings.redis_url)
        self.url_edits["database"].set_url(settings.database_url)
        self.url_edits["storage"].set_url(settings.storage_url)
        self.url_edits["prometheus"].set_url(settings.prometheus_url)
        self.url_edits["prometheus"].setPlaceholderText(
            "empty: no history beyond Redis' 10 minutes (e.g. http://prometheus:9090 for the last 24 hours)"
        )
        self.url_edits["redis"].setPlaceholderText(
            "empty: the local farm's embedded Redis, started by this app (e.g. redis://host:6379/0 for a shared farm)"
        )
        self.url_edits["database"].setPlaceholderText(f"empty: SQLite file {settings.data_dir / 'encodeflow.db'}")
        self.url_edits["storage"].setPlaceholderText(f"empty: the folder {settings.data_dir / 'storage'}")
        self.queue_edit.setText("" if settings.queue == DEFAULT_QUEUE else settings.queue)
        self.notifications_check.setChecked(settings.notifications)
        self.keep_farm_check.setChecked(settings.keep_local_farm)
        self.notify_completed_check.setChecked(self.preferences.notify_completed)
        self.notify_failed_check.setChecked(self.preferences.notify_failed)
        self.close_to_tray_check.setChecked(self.preferences.close_to_tray)
        self._master_toggled(settings.notifications)
        self._fill_presets(
            [self.preset_combo.itemData(i) for i in range(1, self.preset_combo.count())], settings.default_preset
        )
        overridden = [
            var
            for name, var in ENV_VARS.items()
            if name in ("redis_url", "database_url", "storage_url", "prometheus_url", "queue") and os.environ.get(var)
        ]
        if overridden:
            self.env_notice.setText(
                f"Set in the environment, and stronger than the config file: {', '.join(overridden)}. "
                "What you save here for these applies only where they are not set."
            )
        self.env_notice.setVisible(bool(overridden))
        for service in SERVICES:
            set_result(self.results[service], None)
        self._dirty = False

    def refresh(self) -> None:
        """Read the keyring and the presets in the background; keep the user's unsaved edits."""
        presets = self.services.presets

        def read():
            available, message = credentials.available()
            stored, error = None, None
            if available:
                try:
                    stored = credentials.load()
                except credentials.CredentialsError as exc:
                    error = str(exc)
            return available, message, stored, error, sorted(presets.all())

        self.runner.run(read, self._show_keyring_and_presets, self._show_read_error)

    def _show_keyring_and_presets(self, result) -> None:
        available, message, stored, error, preset_names = result
        self.keyring_ok = available
        self.keyring_label.setText(error or message)
        self.keyring_label.setStyleSheet(ERROR_STYLE if error else "")
        for edit in (self.key_id_edit, self.secret_edit):
            edit.setEnabled(available)
            edit.setPlaceholderText("" if available else "not stored: no system keyring")
        if not self._dirty:
            self._stored_credentials = stored
            self.key_id_edit.setText(stored.access_key_id if stored else "")
            self.secret_edit.setText(stored.secret if stored else "")
        current = (
            self.preset_combo.currentData() if self.preset_combo.count() else self.services.settings.default_preset
        )
        self._fill_presets(preset_names, current)

    def _show_read_error(self, exc: Exception) -> None:
        self.keyring_label.setText(f"Cannot read the keyring or the presets: {exc}")
        self.keyring_label.setStyleSheet(ERROR_STYLE)

    def _fill_presets(self, names: list[str], selected: str | None) -> None:
        names = list(names)
        if selected and selected not in names:
            names.append(selected)  # keep a preset the file names even if it is gone, so Save keeps it
        self.preset_combo.clear()
        self.preset_combo.addItem("None", None)
        for name in names:
            self.preset_combo.addItem(name, name)
        index = self.preset_combo.findData(selected) if selected else 0
        self.preset_combo.setCurrentIndex(max(index, 0))

    def revert(self) -> None:
        self.load_from(self.services.settings)
        self._dirty = False
        self.status.clear()
        self.refresh()

    # -- testing -----------------------------------------------------------------------------
    def _candidate_url(self, service: str) -> str | None:
        return self.url_edits[service].url()

    def _typed_credentials(self) -> tuple[str, str] | None:
        key_id, secret = self.key_id_edit.text().strip(), self.secret_edit.text().strip()
        return (key_id, secret) if self.keyring_ok and key_id and secret else None

    def test(self, service: str) -> None:
        """Run one check in the background and show its words next to the field."""
        url = self._candidate_url(service)
        check = self._check_call(service, url, self.services.settings.data_dir)
        button, label = self.test_buttons[service], self.results[service]
        button.setEnabled(False)
        set_result(label, None, f"Testing {LABELS[service].lower()}…")

        def done(result: CheckResult) -> None:
            button.setEnabled(True)
            if self._candidate_url(service) == url:  # the field was not changed while we waited
                set_result(label, result)

        def failed(exc: Exception) -> None:
            done(CheckResult(False, f"the check itself failed: {exc}"))

        self.runner.run(check, done, failed)

    def _check_call(self, service: str, url: str | None, data_dir: Path):
        """What to run on a pool thread to check ``service`` at ``url`` (``None``: the default)."""
        defaults = Settings(data_dir=data_dir)
        if service == "database":
            return lambda: check_database(url or defaults.effective_database_url)
        if service == "storage":
            typed = self._typed_credentials()
            return lambda: check_storage(url or defaults.effective_storage_url, credentials=typed)
        if service == "prometheus":
            return lambda: check_prometheus(url)
        if url:
            return lambda: check_redis(url)
        return lambda services=self.services: _check_embedded_redis(services)

    # -- saving ------------------------------------------------------------------------------
    def candidate_settings(self) -> Settings:
        """The settings as the fields show them; ``SettingsError`` if one cannot work."""
        current = self.services.settings
        settings = current.replace(
            redis_url=self._candidate_url("redis"),
            database_url=self._candidate_url("database"),
            storage_url=self._candidate_url("storage"),
            prometheus_url=self._candidate_url("prometheus"),
            queue=self.queue_edit.text().strip() or DEFAULT_QUEUE,
            default_preset=self.preset_combo.currentData(),
            notifications=self.notifications_check.isChecked(),
            keep_local_farm=self.keep_farm_check.isChecked(),
            config_path=current.config_path or default_config_path(),
        )
        settings.validate()
        return settings

    def save(self) -> None:
        """Check the three services, then write the config file (and the keyring); never on failure."""
        if self._saving:
            return
        try:
            settings = self.candidate_settings()
        except SettingsError as exc:
            self._show_status(f"Not saved: {exc}", ok=False)
            return
        checks = {
            service: self._check_call(service, getattr(settings, f"{service}_url"), settings.data_dir)
            for service in SERVICES
        }
        new_credentials = self._credentials_to_store()

        def task():
            results = {service: check() for service, check in checks.items()}
            if not all(result.ok for result in results.values()):
                return results, None, None
            path = settings.save()
            credentials_error = None
            if new_credentials is not None:
                try:
                    credentials.save(*new_credentials)
                except credentials.CredentialsError as exc:
                    credentials_error = str(exc)
            return results, path, credentials_error

        self._saving = True
        self.save_button.setEnabled(False)
        for service in SERVICES:
            set_result(self.results[service], None, f"Testing {LABELS[service].lower()}…")
        self._show_status("Checking Redis, the database, storage and Prometheus before saving…", ok=None)
        self.runner.run(task, lambda result: self._saved(settings, new_credentials, *result), self._save_failed)

    def _credentials_to_store(self) -> tuple[str, str] | None:
        if not self.keyring_ok:
            return None
        typed = (self.key_id_edit.text().strip(), self.secret_edit.text().strip())
        stored = tuple(self._stored_credentials) if self._stored_credentials else ("", "")
        return typed if typed != stored else None

    def _saved(self, settings: Settings, new_credentials, results, path, credentials_error) -> None:
        self._saving = False
        self.save_button.setEnabled(True)
        for service, result in results.items():
            set_result(self.results[service], result)
        if path is None:
            failed = "; ".join(f"{LABELS[s]}: {r.message}" for s, r in results.items() if not r.ok)
            self._show_status(f"Not saved, fix this first — {failed}", ok=False)
            return
        if new_credentials is not None and credentials_error is None:
            key_id, secret = new_credentials
            self._stored_credentials = credentials.S3Credentials(key_id, secret) if key_id else None
            if key_id:
                # The user just chose these: this run's storage and local nodes use them from now on.
                credentials.apply_to_environment(self._stored_credentials, override=True)
        self._save_preferences()
        self._dirty = False
        message = f"Saved to {path}."
        if credentials_error:
            self._show_status(f"{message} The S3 credentials were not stored: {credentials_error}", ok=False)
        else:
            self._show_status(message, ok=True)
        self.settings_saved.emit(settings)

    def _save_failed(self, exc: Exception) -> None:
        self._saving = False
        self.save_button.setEnabled(True)
        self._show_status(f"Not saved: {exc}", ok=False)

    def _save_preferences(self) -> None:
        self.preferences.notify_completed = self.notify_completed_check.isChecked()
        self.preferences.notify_failed = self.notify_failed_check.isChecked()
        self.preferences.close_to_tray = self.close_to_tray_check.isChecked()
        self.preferences.sync()

    # -- small slots -------------------------------------------------------------------------
    def _edited(self, service: str) -> None:
        set_result(self.results[service], None)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _master_toggled(self, on: bool) -> None:
        self.notify_completed_check.setEnabled(on)
        self.notify_failed_check.setEnabled(on)

    def _choose_storage_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Storage folder")
        if folder:
            self.url_edits["storage"].setText(Path(folder).resolve().as_uri())
            self._edited("storage")

    def _show_status(self, text: str, ok: bool | None) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(BUSY_STYLE if ok is None else OK_STYLE if ok else ERROR_STYLE)


def _check_embedded_redis(services) -> CheckResult:
    try:
        url = services.redis_url()
    except Exception:
        return CheckResult(True, "the embedded Redis, started with the local farm (not running now)")
    result = check_redis(url)
    return CheckResult(result.ok, f"embedded: {result.message}")
