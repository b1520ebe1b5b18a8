"""The Settings page on a real local farm: Test buttons show the checks' words, Save refuses an
unreachable Redis and writes a reachable one to the config file that the CLI and nodes read."""

from __future__ import annotations

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from PySide6.QtCore import QSettings, Qt

from app import credentials
from app.pages.settings_page import SettingsPage
from app.preferences import Preferences
from farm.base.settings import Settings

UNREACHABLE = "redis://:secretpw@127.0.0.1:1/0"
REACHABLE = "redis://127.0.0.1:6379/0"  # the test machine's Redis


@pytest.fixture
def preferences(tmp_path):
    return Preferences(QSettings(str(tmp_path / "prefs.ini"), QSettings.IniFormat))


@pytest.fixture
def page(qtbot, services, runner, preferences):
    page = SettingsPage(services, runner, None, preferences=preferences)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.preset_combo.count() > 1)  # refresh() read the keyring and presets
    return page


def type_into(qtbot, edit, text: str) -> None:
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key_Delete)
    qtbot.keyClicks(edit, text)


def test_unreachable_redis_is_refused_and_a_reachable_one_is_saved(qtbot, page, services, preferences):
    config_path = services.settings.save()
    before = config_path.read_bytes()
    saved = []
    page.settings_saved.connect(saved.append)

    type_into(qtbot, page.url_edits["redis"], UNREACHABLE)
    qtbot.mouseClick(page.test_buttons["redis"], Qt.LeftButton)
    result = page.results["redis"]
    qtbot.waitUntil(lambda: "Connection refused" in result.text(), timeout=10_000)
    assert "cannot connect to Redis at 127.0.0.1:1: Connection refused" in result.text()
    assert "secretpw" not in result.text()

    qtbot.mouseClick(page.save_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: page.status.text().startswith("Not saved"), timeout=15_000)
    assert "Connection refused" in page.status.text()
    assert "secretpw" not in page.status.text()
    assert config_path.read_bytes() == before
    assert saved == []

    type_into(qtbot, page.url_edits["redis"], REACHABLE)
    type_into(qtbot, page.queue_edit, "studio-a")
    page.preset_combo.setCurrentIndex(page.preset_combo.findData("720p-mp4"))
    page.keep_farm_check.setChecked(True)
    page.notify_completed_check.setChecked(False)
    page.close_to_tray_check.setChecked(True)
    with qtbot.waitSignal(page.settings_saved, timeout=15_000) as blocker:
        qtbot.mouseClick(page.save_button, Qt.LeftButton)

    assert page.status.text() == f"Saved to {config_path}."
    assert page.results["redis"].text().startswith("✓ Redis ")
    assert page.results["database"].text().startswith("✓ SQLite ")
    assert page.results["storage"].text().startswith("✓ folder ")
    loaded = Settings.load(config_path=config_path)
    assert loaded.redis_url == REACHABLE
    assert loaded.queue == "studio-a"
    assert loaded.default_preset == "720p-mp4"
    assert loaded.keep_local_farm is True
    assert blocker.args[0] == loaded
    assert (preferences.notify_completed, preferences.notify_failed, preferences.close_to_tray) == (False, True, True)


def test_empty_fields_test_the_embedded_defaults(qtbot, page, services):
    for service in ("redis", "database", "storage"):
        assert page.url_edits[service].text() == ""
        qtbot.mouseClick(page.test_buttons[service], Qt.LeftButton)
    qtbot.waitUntil(
        lambda: all(page.results[s].text().startswith("✓") for s in ("redis", "database", "storage")), timeout=10_000
    )
    assert "embedded" in page.results["redis"].text()
    assert str(services.settings.data_dir / "encodeflow.db") in page.results["database"].text()
    assert "encodeflow.db" in page.url_edits["database"].placeholderText()

    type_into(qtbot, page.url_edits["storage"], "ftp://nowhere")
    qtbot.mouseClick(page.save_button, Qt.LeftButton)  # refused before any check: validate() says why
    assert "must be s3://bucket[/prefix] or file:///absolute/dir" in page.status.text()


def test_without_a_keyring_the_page_says_where_credentials_come_from(qtbot, services, runner, preferences):
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())  # what keyring falls back to on a headless Linux box like this one
    try:
        page = SettingsPage(services, runner, None, preferences=preferences)
        qtbot.addWidget(page)
        qtbot.waitUntil(lambda: page.keyring_label.text() == credentials.NO_KEYRING_MESSAGE)
        assert not page.key_id_edit.isEnabled() and not page.secret_edit.isEnabled()
        with pytest.raises(credentials.CredentialsError, match="No system keyring found"):
            credentials.save("id", "secret")
    finally:
        keyring.set_keyring(previous)


class MemoryKeyring(KeyringBackend):
    """A keyring that keeps secrets in a dict: there is no desktop keyring on the test machine."""

    priority = 1
    viable = False  # never chosen by keyring itself, only where a test sets it

    def __init__(self):
        super().__init__()
        self.secrets = {}

    def get_password(self, service, username):
        return self.secrets.get((service, username))

    def set_password(self, service, username, password):
        self.secrets[(service, username)] = password

    def delete_password(self, service, username):
        self.secrets.pop((service, username), None)


def test_credentials_are_stored_in_the_keyring_on_save(qtbot, services, runner, preferences, monkeypatch):
    previous = keyring.get_keyring()
    store = MemoryKeyring()
    keyring.set_keyring(store)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")  # restored after the test
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    try:
        page = SettingsPage(services, runner, None, preferences=preferences)
        qtbot.addWidget(page)
        qtbot.waitUntil(page.key_id_edit.isEnabled)
        assert "system keyring" in page.keyring_label.text()
        assert page.secret_edit.echoMode() == page.secret_edit.EchoMode.Password
        type_into(qtbot, page.key_id_edit, "AKIATYPED")
        type_into(qtbot, page.secret_edit, "typed-secret")
        with qtbot.waitSignal(page.settings_saved, timeout=15_000):
            qtbot.mouseClick(page.save_button, Qt.LeftButton)
        assert credentials.load() == ("AKIATYPED", "typed-secret")
        assert store.secrets[(credentials.SERVICE, "secret-access-key")] == "typed-secret"
        import os

        assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIATYPED"  # this run's storage uses them now
    finally:
        keyring.set_keyring(previous)


def test_environment_overrides_are_pointed_out(qtbot, services, runner, preferences, monkeypatch):
    monkeypatch.setenv("ENCODEFLOW_QUEUE", "from-env")
    page = SettingsPage(services, runner, None, preferences=preferences)
    qtbot.addWidget(page)
    assert not page.env_notice.isHidden()
    assert "ENCODEFLOW_QUEUE" in page.env_notice.text()
    qtbot.waitUntil(lambda: page.preset_combo.count() > 1)


def test_settings_page_renders(qtbot, page, tmp_path):
    qtbot.mouseClick(page.test_buttons["database"], Qt.LeftButton)
    type_into(qtbot, page.url_edits["redis"], "redis://127.0.0.1:1/0")
    qtbot.mouseClick(page.test_buttons["redis"], Qt.LeftButton)
    qtbot.waitUntil(
        lambda: page.results["redis"].text().startswith("✗") and page.results["database"].text().startswith("✓"),
        timeout=10_000,
    )
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    assert page.grab().save(str(tmp_path / "settings.png"))


def test_url_passwords_are_shown_masked_and_kept(qtbot, page, services, monkeypatch):
    """A saved URL with a password shows as ``:***@``; editing its host keeps the hidden password."""
    secret_url = "redis://:hunter2-pw@127.0.0.1:6379/0"
    page.load_from(
        services.settings.replace(
            redis_url=secret_url, database_url="postgresql+psycopg://farm:db-pw-9@db.example/farm"
        )
    )
    redis_edit, db_edit = page.url_edits["redis"], page.url_edits["database"]
    assert redis_edit.text() == "redis://:***@127.0.0.1:6379/0"
    assert db_edit.text() == "postgresql+psycopg://farm:***@db.example/farm"
    assert page.candidate_settings().redis_url == secret_url

    # The user changes the database's host only: the password they cannot see is kept.
    db_edit.setFocus()
    db_edit.setText(db_edit.text().replace("db.example", "db2.example"))
    db_edit.editingFinished.emit()
    assert page.candidate_settings().database_url == "postgresql+psycopg://farm:db-pw-9@db2.example/farm"

    # A new URL typed whole is taken as typed, and masked once the user leaves the field.
    type_into(qtbot, redis_edit, "redis://:new-pw-7@127.0.0.1:6379/1")
    redis_edit.editingFinished.emit()
    assert redis_edit.text() == "redis://:***@127.0.0.1:6379/1"
    assert page.candidate_settings().redis_url == "redis://:new-pw-7@127.0.0.1:6379/1"
    page.grab()  # rendered: nothing on screen holds a password
    shown = " ".join(w.text() for w in page.findChildren(type(redis_edit)))
    assert "hunter2" not in shown and "db-pw-9" not in shown and "new-pw-7" not in shown


def test_the_optional_prometheus_url_is_tested_and_saved(qtbot, page, services, prometheus_server):
    assert page.url_edits["prometheus"].text() == ""
    qtbot.mouseClick(page.test_buttons["prometheus"], Qt.LeftButton)
    result = page.results["prometheus"]
    qtbot.waitUntil(lambda: result.text().startswith("✓"), timeout=10_000)
    assert "not set: the Metrics page shows the last 10 minutes from Redis" in result.text()

    type_into(qtbot, page.url_edits["prometheus"], "http://127.0.0.1:9")
    qtbot.mouseClick(page.save_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: page.status.text().startswith("Not saved"), timeout=20_000)
    assert "Prometheus: cannot reach Prometheus at http://127.0.0.1:9" in page.status.text()

    url = prometheus_server(["127.0.0.1:9"])  # a real Prometheus; its one target is down
    type_into(qtbot, page.url_edits["prometheus"], url)
    with qtbot.waitSignal(page.settings_saved, timeout=20_000) as blocker:
        qtbot.mouseClick(page.save_button, Qt.LeftButton)
    assert page.results["prometheus"].text() == (
        f"✓ Prometheus at {url} answers, but scrapes no EncodeFlow node yet; add the nodes' metrics "
        "ports to its scrape config (packaging/prometheus)"
    )
    assert blocker.args[0].prometheus_url == url
    assert Settings.load(config_path=blocker.args[0].config_path).prometheus_url == url
