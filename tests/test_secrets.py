"""Secrets never leak: S3 keys, Redis and database passwords stay out of logs, messages, job JSON,
the queue and the panel, whether the services answer, refuse or cannot be reached.

The services are real and really check the secrets: a private ``redis-server --requirepass``, a
private moto S3 server with authentication on (an IAM user whose key must sign every request),
PostgreSQL with a password in its URL. Every test ends by grepping what a user or an admin could
see for the secret strings. The log filter (``farm.base.redact``) is only a second line of defence, so
the end-to-end tests also check the sources: the CLI's error lines are printed, not logged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import stat
import subprocess
import sys
import urllib.request
import uuid

import pytest
import redis
import sqlalchemy as sa

from farm.base import redact
from farm.base.settings import ENV_VARS, Settings, SettingsError
from farm.services.checks import check_database, check_redis, check_storage
from farm.services.db.engine import DatabaseError, open_database
from tests.e2e.helpers import json_lines, run_cli, wait_for
from tests.farm.test_redis_tls import NodeRun, PrivateRedis, free_port

# The panel test's widgets need no screen (what tests/app/conftest.py does for the panel's tests).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def leaks(text: str, *secret_values: str) -> list[str]:
    return [value for value in secret_values if value and value in text]


# -- the filter and the URL rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:s3cret-pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:s3cret-pw@h:6380/0?ssl_cert_reqs=none", "rediss://user:***@h:6380/0?ssl_cert_reqs=none"),
        ("redis://:ab/cd#ef@h:6379/0", "redis://:***@h:6379/0"),  # unencoded "/" and "#" in the password
        ("postgresql+psycopg://u:p@ss@db/x", "postgresql+psycopg://u:***@db/x"),  # unencoded "@"
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("postgresql://postgres@db/x", "postgresql://postgres@db/x"),
        ("file:///srv/me@work/clips", "file:///srv/me@work/clips"),
        ("s3://bucket/inputs/a@2x.mp4", "s3://bucket/inputs/a@2x.mp4"),
    ],
)
def test_redact_url(url, shown):
    assert redact.redact_url(url) == shown


def test_a_drivers_words_lose_the_password_as_written_and_as_decoded():
    said = "auth failed for p%40ss/x (p@ss/x) at db"
    assert redact.mask_password(said, "p%40ss/x") == "auth failed for *** (***) at db"
    assert redact.mask_password(said, None) == said


def test_the_log_filter_masks_url_credentials_and_known_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-42")
    redact.register_secret("registered-db-pw")
    stream = _Stream()
    logger = logging.getLogger(f"secrets-test-{uuid.uuid4().hex}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    redact.install(logger)
    redact.install(logger)
    assert len(handler.filters) == 1, "installing twice adds one filter"

    logger.warning("connecting to %s with %s", "redis://:url-pw-99@h:1/0", "registered-db-pw")
    try:
        raise ConnectionError("auth failed for aws-secret-value-42")
    except ConnectionError:
        logger.exception("storage said")

    written = stream.text
    assert "redis://:***@h:1/0" in written and "storage said" in written and "Traceback" in written
    assert leaks(written, "url-pw-99", "registered-db-pw", "aws-secret-value-42") == []


class _Stream:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize(
    "var, url, secret_part",
    [
        ("ENCODEFLOW_REDIS_URL", "redis://:half/other-half@127.0.0.1:6379/0", "other-half"),
        ("ENCODEFLOW_REDIS_URL", "redis://:before#after-hash@127.0.0.1:6379/0", "after-hash"),
        ("ENCODEFLOW_DATABASE_URL", "postgresql+psycopg://u:first@second-part@127.0.0.1/db", "second-part"),
    ],
)
def test_a_password_that_was_not_percent_encoded_is_refused_without_quoting_it(
    var, url, secret_part, monkeypatch, tmp_path
):
    """Left to the drivers, such a URL fails later with their words, which quote part of the
    password ("Port could not be cast to integer value as 'half'")."""
    monkeypatch.setenv(var, url)
    with pytest.raises(SettingsError) as caught:
        Settings.load()
    assert "percent-encode" in str(caught.value) and leaks(str(caught.value), secret_part, "half", "first") == []
    for command in (
        [sys.executable, "-m", "farm", "jobs"],
        [sys.executable, "-m", "farm_node", "--no-metrics", "--work-dir", str(tmp_path / "w")],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "percent-encode" in result.stderr
        assert leaks(result.stderr + result.stdout, secret_part, "half", "first") == []


@pytest.mark.parametrize(
    "check, url, secret_part",
    [
        (check_redis, "redis://:half/other-half@127.0.0.1:6379/0", "half"),
        (check_database, "postgresql+psycopg://u:first@second-part@127.0.0.1/db", "second-part"),
    ],
)
def test_the_connection_checks_do_not_quote_a_misread_password(check, url, secret_part):
    result = check(url)
    assert not result.ok and leaks(result.message, secret_part) == []


def test_the_config_file_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "cfg" / "config.toml"
    Settings.load(config_path=path).replace(redis_url="redis://:file-pw-123@farm:6379/0").save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings.load(config_path=path).redis_url.endswith("@farm:6379/0")


# -- S3 that checks its keys ---------------------------------------------------------------------


class AuthS3:
    """moto's S3 as its own process, authentication on: only a known IAM user's key may sign."""

    def __init__(self, directory):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")  # the three IAM calls below
        self.log = (directory / "moto.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for(self._answers, timeout=60, interval=0.2, what="moto's server")
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="farm")
        key = iam.create_access_key(UserName="farm")["AccessKey"]
        iam.put_user_policy(
            UserName="farm",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            ),
        )
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
            return True
        except OSError:
            return self.proc.poll() is not None  # died: the wait ends, and the IAM calls say why

    def bucket(self) -> str:
        import boto3

        name = f"ef-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        ).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def auth_s3(tmp_path_factory):
    server = AuthS3(tmp_path_factory.mktemp("moto-auth"))
    yield server
    server.stop()


def use_s3(monkeypatch, server: AuthS3, secret: str) -> str:
    bucket = server.bucket()
    for var, value in (
        ("AWS_ENDPOINT_URL", server.endpoint),
        ("AWS_ACCESS_KEY_ID", server.key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        (ENV_VARS["storage_url"], f"s3://{bucket}/farm"),
    ):
        monkeypatch.setenv(var, value)
    return bucket


def test_a_wrong_s3_secret_is_named_and_never_shown(auth_s3, redis_url, clip, monkeypatch, tmp_path):
    wrong = "wrong-secret-" + secrets.token_hex(8)
    use_s3(monkeypatch, auth_s3, wrong)

    result = run_cli("-v", "submit", str(clip))
    node = subprocess.run(
        [sys.executable, "-m", "farm_node", "--name", "s3-node", "--no-metrics", "--log-level", "DEBUG"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "rejected the credentials (SignatureDoesNotMatch)" in result.stderr.splitlines()[-1]
    # The node's start-up check begins with a HEAD request, whose 403 carries no error code.
    assert node.returncode == 2 and re.search(r"rejected the credentials|access denied by S3", node.stderr)
    shown = result.stdout + result.stderr + node.stdout + node.stderr
    assert leaks(shown, wrong, auth_s3.secret, auth_s3.key_id) == []
    checked = check_storage(os.environ[ENV_VARS["storage_url"]])
    assert re.search(r"rejected the credentials|access denied by S3", checked.message)
    assert leaks(checked.message, wrong, auth_s3.key_id) == []


# -- Redis that checks its password --------------------------------------------------------------


@pytest.fixture
def password_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def test_wrong_and_unreachable_redis_passwords_are_never_shown(password_redis, clip, monkeypatch, tmp_path):
    wrong_pw = "wrong-pw-" + secrets.token_hex(6)
    wrong = password_redis.url.replace(password_redis.password, wrong_pw)
    unreachable = f"redis://:{password_redis.password}@127.0.0.1:{free_port()}/0"
    shown = ""
    for url, expected in ((wrong, "refused the credentials"), (unreachable, "cannot connect to Redis at 127.0.0.1")):
        monkeypatch.setenv(ENV_VARS["redis_url"], url)
        submitted = run_cli("-v", "submit", str(clip))
        assert submitted.returncode == 1 and expected in submitted.stderr, submitted.stderr
        assert "Nothing was uploaded" in submitted.stderr
        jobs = run_cli("jobs", "--json")  # refused before the upload: no job, no input in storage
        assert jobs.returncode == 0 and jobs.stdout.strip() == "", jobs.stdout
        stored = Settings.load().data_dir / "storage"
        assert not [p for p in stored.rglob("*") if p.is_file()]
        listed = run_cli("-v", "nodes")
        assert listed.returncode == 1
        shown += submitted.stderr + jobs.stdout + listed.stdout + listed.stderr
    monkeypatch.setenv(ENV_VARS["redis_url"], wrong)
    node = subprocess.run(
        [sys.executable, "-m", "farm_node", "--name", "pw-node", "--no-metrics", "--log-level", "DEBUG"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert node.returncode == 2 and "invalid username-password pair" in node.stderr
    shown += node.stdout + node.stderr
    assert leaks(shown, wrong_pw, password_redis.password) == []
    assert leaks(check_redis(wrong).message + check_redis(unreachable).message, wrong_pw, password_redis.password) == []


# -- PostgreSQL: its password, and SSL options passed through --------------------------------------


@pytest.fixture
def pg_with_password(pg_server_url):
    """The test database's URL with a password in it (the local server trusts, so any works)."""
    password = "pg-pw-" + secrets.token_hex(8)
    url = sa.make_url(pg_server_url).set(password=password).render_as_string(hide_password=False)
    return url, password


def server_has_ssl(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SHOW ssl")).scalar() == "on"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_ssl_options_reach_the_driver_and_the_password_stays_hidden(pg_with_password, monkeypatch, tmp_path):
    url, password = pg_with_password
    required = url + "?sslmode=require"
    with open_database(url + "?sslmode=disable") as db:  # an option the driver takes as it is
        assert "sslmode=disable" in db.url and password not in db.url
    if server_has_ssl(url):
        with open_database(required) as db, db.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
        return
    # This server has no SSL: only a driver that was asked for it says so.
    with pytest.raises(DatabaseError) as caught:
        open_database(required)
    assert "SSL was required" in str(caught.value)
    assert "SSL was required" in check_database(required).message

    monkeypatch.setenv(ENV_VARS["database_url"], required)
    cli = run_cli("-v", "jobs")
    node = subprocess.run(
        [
            sys.executable,
            "-m",
            "farm_node",
            "--name",
            "pg-node",
            "--no-metrics",
            "--log-level",
            "DEBUG",
            "--work-dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1 and "SSL was required" in cli.stderr.splitlines()[-1]
    assert node.returncode == 1 and "SSL was required" in node.stderr
    shown = str(caught.value) + check_database(required).message + cli.stderr + node.stdout + node.stderr
    assert leaks(shown, password) == []


# -- a whole farm configured with secrets --------------------------------------------------------


def redis_contents(url: str) -> str:
    """Every string, hash, list, set and stream value in the Redis at ``url``, as text."""
    client = redis.Redis.from_url(url, decode_responses=True)
    parts = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == "string":
                parts.append(client.get(key) or "")
            elif kind == "hash":
                parts.append(json.dumps(client.hgetall(key)))
            elif kind == "list":
                parts.append(json.dumps(client.lrange(key, 0, -1)))
            elif kind in ("set", "zset"):
                parts.append(json.dumps(sorted(client.zrange(key, 0, -1) if kind == "zset" else client.smembers(key))))
            elif kind == "stream":
                parts.append(json.dumps(client.xrange(key)))
    finally:
        client.close()
    return "\n".join(parts)


@pytest.mark.postgres
def test_a_farm_configured_with_secrets_shows_none_of_them(
    password_redis, auth_s3, pg_with_password, clip, monkeypatch, tmp_path
):
    pg_url, pg_password = pg_with_password
    use_s3(monkeypatch, auth_s3, auth_s3.secret)
    monkeypatch.setenv(ENV_VARS["redis_url"], password_redis.url)
    monkeypatch.setenv(ENV_VARS["database_url"], pg_url)
    sa_engine = sa.create_engine(pg_url)
    with sa_engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    sa_engine.dispose()
    node = NodeRun("secret-node", tmp_path / "node.log", "--log-level", "DEBUG")
    try:
        node.wait_registered(password_redis.url, "transcode")
        submitted = run_cli("-v", "submit", str(clip), "--resolution", "360p", "--wait", "--json", "--timeout", "120")
        assert submitted.returncode == 0, submitted.stderr
        (job,) = json_lines(submitted.stdout)
        assert job["status"] == "completed"
        outputs = [
            run_cli("-v", *args)
            for args in (
                ("show", job["id"], "--json"),
                ("jobs", "--json"),
                ("nodes", "--json"),
                ("download", job["id"], str(tmp_path)),
            )
        ]
        assert all(result.returncode == 0 for result in outputs), [r.stderr for r in outputs]
    finally:
        assert node.stop() == 0
    seen = "\n".join(
        [
            submitted.stdout,
            submitted.stderr,
            node.log.read_text(),
            redis_contents(password_redis.url),
            *(r.stdout + r.stderr for r in outputs),
        ]
    )
    assert "secret-node" in seen and job["id"] in seen  # the grep reads real output
    assert leaks(seen, password_redis.password, auth_s3.secret, auth_s3.key_id, pg_password) == []


# -- the panel -------------------------------------------------------------------------------------


def texts_on(widget) -> list[str]:
    """What the widget shows a user: every label, button, title, tooltip and table or tree cell.
    Line edits count too (a URL field masks its password once the user leaves it); password fields
    (echo mode Password) show dots and are left out."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QAbstractButton, QAbstractItemView, QComboBox, QGroupBox, QLabel, QLineEdit, QWidget

    found = []
    for child in [widget, *widget.findChildren(QWidget)]:
        found.append(child.toolTip())
        if isinstance(child, QLabel):
            found.append(child.text())
        elif isinstance(child, (QAbstractButton, QGroupBox)):
            found.append(child.text() if isinstance(child, QAbstractButton) else child.title())
        elif isinstance(child, QComboBox):
            found += [child.itemText(i) for i in range(child.count())]
        elif isinstance(child, QLineEdit):
            found.append(child.placeholderText())
            if child.echoMode() == QLineEdit.Normal:
                found.append(child.text())
        elif isinstance(child, QAbstractItemView) and child.model() is not None:
            found += _cells(child.model(), None, Qt)
    return found


def _cells(model, parent, Qt) -> list[str]:
    from PySide6.QtCore import QModelIndex

    parent = parent or QModelIndex()
    cells = []
    for row in range(model.rowCount(parent)):
        for column in range(model.columnCount(parent)):
            index = model.index(row, column, parent)
            cells += [str(index.data(role) or "") for role in (Qt.DisplayRole, Qt.ToolTipRole)]
        cells += _cells(model, model.index(row, 0, parent), Qt)
    return cells


@pytest.mark.postgres
@pytest.mark.skipif(importlib.util.find_spec("PySide6") is None, reason="the panel is not installed")
def test_the_settings_and_storage_pages_show_no_secret_after_failed_tests(
    qtbot, auth_s3, pg_with_password, monkeypatch, tmp_path, data_dir
):
    from PySide6.QtCore import QSettings, Qt

    from app.pages.settings_page import SettingsPage
    from app.pages.storage_page import StoragePage
    from app.preferences import Preferences
    from app.runner import BackgroundRunner
    from app.services import AppServices

    redis_pw, s3_wrong = "redis-pw-" + secrets.token_hex(6), "s3-wrong-" + secrets.token_hex(8)
    pg_url, pg_password = pg_with_password
    bucket = use_s3(monkeypatch, auth_s3, s3_wrong)
    monkeypatch.delenv(ENV_VARS["storage_url"])  # the panel's own storage stays local until saved
    services = AppServices(Settings.load())
    services.open()
    runner = BackgroundRunner()
    page = SettingsPage(
        services, runner, None, preferences=Preferences(QSettings(str(tmp_path / "p.ini"), QSettings.IniFormat))
    )
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: page.preset_combo.count() > 1)
    typed = {
        "redis": f"redis://:{redis_pw}@127.0.0.1:{free_port()}/0",
        "database": pg_url + "?sslmode=require&connect_timeout=3",
        "storage": f"s3://{bucket}/farm",
    }
    for service, url in typed.items():
        page.url_edits[service].setText(url)
        page.url_edits[service].editingFinished.emit()  # the user moves on to the next field
    if page.key_id_edit.isEnabled():
        page.key_id_edit.setText(auth_s3.key_id)
        page.secret_edit.setText(s3_wrong)
    for service in typed:
        qtbot.mouseClick(page.test_buttons[service], Qt.LeftButton)
    qtbot.waitUntil(lambda: all(page.results[s].text().startswith("✗") for s in typed), timeout=30_000)
    assert re.search(r"rejected the credentials|access denied by S3", page.results["storage"].text())
    qtbot.mouseClick(page.save_button, Qt.LeftButton)  # refused: the same words in the status line
    qtbot.waitUntil(lambda: page.status.text().startswith("Not saved"), timeout=30_000)

    storage_services = AppServices(Settings.load().replace(storage_url=f"s3://{bucket}/farm"))
    storage_page = StoragePage(storage_services, runner, None)
    qtbot.addWidget(storage_page)
    storage_page.refresh()
    qtbot.waitUntil(lambda: not storage_page.error.isHidden(), timeout=30_000)
    assert "SignatureDoesNotMatch" in storage_page.error.text()

    shown = "\n".join(texts_on(page) + texts_on(storage_page))
    assert runner.wait(30_000)
    services.close()
    storage_services.close()
    assert "Connection refused" in shown and "SSL" in shown
    assert leaks(shown, redis_pw, s3_wrong, auth_s3.secret, auth_s3.key_id, pg_password) == []
