"""The connection checks behind the Settings page's Test buttons: real Redis, SQLite, PostgreSQL,
a folder and moto's S3 server; failures must say what went wrong, and never show a password."""

from __future__ import annotations

import time

import pytest

from farm.services.checks import check_database, check_redis, check_storage


def test_redis_ok_reports_the_version(redis_url):
    result = check_redis(redis_url)
    assert result.ok, result.message
    assert result.message.startswith("Redis ")
    assert "127.0.0.1" in result.message or "localhost" in result.message


def test_redis_refused_says_so_quickly():
    started = time.monotonic()
    result = check_redis("redis://127.0.0.1:1")
    assert not result.ok
    assert "cannot connect to Redis at 127.0.0.1:1: Connection refused" in result.message
    assert time.monotonic() - started < 5


def test_redis_message_never_shows_the_password():
    result = check_redis("redis://:secretpw@127.0.0.1:1/0")
    assert not result.ok
    assert "secretpw" not in result.message
    assert "127.0.0.1:1" in result.message


def test_redis_wrong_or_missing_password_is_named_without_showing_it(embedded_redis_url):
    password = embedded_redis_url.split("//:", 1)[1].split("@", 1)[0]
    wrong = check_redis(embedded_redis_url.replace(password, "notthepassword"))
    assert not wrong.ok
    assert "refused the credentials" in wrong.message
    assert "notthepassword" not in wrong.message and password not in wrong.message
    missing = check_redis(embedded_redis_url.replace(f":{password}@", ""))
    assert not missing.ok and "needs a password" in missing.message
    assert check_redis(embedded_redis_url).ok


@pytest.fixture
def embedded_redis_url(settings):
    from farm.services.embedded import ensure_embedded_redis

    server = ensure_embedded_redis(settings)
    yield server.url
    server.stop()


def test_not_a_redis_url():
    result = check_redis("http://127.0.0.1:6379")
    assert not result.ok and "not a Redis URL" in result.message


def test_database_sqlite_ok(tmp_path):
    result = check_database(f"sqlite:///{tmp_path / 'sub' / 'farm.db'}")
    assert result.ok, result.message
    assert result.message.startswith("SQLite 3.")
    assert "farm.db" in result.message


@pytest.mark.postgres
def test_database_postgresql_ok(pg_url):
    result = check_database(pg_url)
    assert result.ok, result.message
    assert result.message.startswith("PostgreSQL ")


def test_database_refused_is_clear_and_hides_the_password():
    result = check_database("postgresql+psycopg://farm:hunter2pw@127.0.0.1:1/farm")
    assert not result.ok
    assert "cannot connect to database" in result.message
    assert "Connection refused" in result.message
    assert "hunter2pw" not in result.message


def test_database_bad_url_and_missing_driver():
    assert "not a valid SQLAlchemy URL" in check_database("not a url").message
    result = check_database("nosuchdialect://x/y")
    assert not result.ok and "cannot use database" in result.message


def test_storage_folder_ok(tmp_path):
    result = check_storage((tmp_path / "store").as_uri())
    assert result.ok, result.message
    assert "readable and writable" in result.message
    assert list((tmp_path / "store").iterdir()) == []  # the probe is cleaned up


def test_storage_s3_ok_and_missing_bucket(s3_url):
    result = check_storage(s3_url)
    assert result.ok, result.message
    assert "bucket" in result.message and "readable and writable" in result.message

    missing = check_storage("s3://ef-no-such-bucket-here/farm")
    assert not missing.ok
    assert "does not exist" in missing.message


def test_storage_s3_with_given_credentials(s3_url, monkeypatch, tmp_path):
    # moto accepts any keys; what matters is that the given ones are used when none are in the env.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert "credentials" in check_storage(s3_url).message
    assert check_storage(s3_url, credentials=("typed-key-id", "typed-secret")).ok


def test_storage_bad_url():
    result = check_storage("ftp://example.com/x")
    assert not result.ok and "unsupported storage URL" in result.message
