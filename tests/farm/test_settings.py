import pytest

from farm.base.redact import redact_url
from farm.base.settings import Settings, SettingsError


def test_embedded_defaults_live_under_the_data_dir(data_dir):
    settings = Settings.load()
    assert settings.data_dir == data_dir.resolve()
    assert settings.uses_embedded_redis
    assert settings.effective_database_url == f"sqlite:///{data_dir.resolve() / 'encodeflow.db'}"
    assert settings.effective_storage_url == (data_dir.resolve() / "storage").as_uri()
    assert settings.queue == "transcode"


def test_precedence_flag_then_env_then_file_then_default(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('queue = "from-file"\nstorage_url = "file:///srv/from-file"\nredis_url = "redis://file:6379"\n')
    monkeypatch.setenv("ENCODEFLOW_QUEUE", "from-env")
    monkeypatch.setenv("ENCODEFLOW_REDIS_URL", "redis://env:6379")
    settings = Settings.load(flags={"queue": "from-flag", "redis_url": None}, config_path=config)
    assert settings.queue == "from-flag"
    assert settings.redis_url == "redis://env:6379"
    assert settings.storage_url == "file:///srv/from-file"
    assert settings.database_url is None


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "cfg" / "config.toml"
    saved = Settings.load(config_path=path).replace(redis_url="redis://farm:6379/2", default_preset="720p-webm")
    saved.save(path)
    loaded = Settings.load(config_path=path)
    assert loaded.redis_url == "redis://farm:6379/2"
    assert loaded.default_preset == "720p-webm"


@pytest.mark.parametrize(
    "var,value,message",
    [
        ("ENCODEFLOW_REDIS_URL", "http://nope", "must start with redis://"),
        ("ENCODEFLOW_STORAGE_URL", "relative/dir", "s3://bucket"),
        ("ENCODEFLOW_QUEUE", "a:b", "plain name"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=message):
        Settings.load()


def test_unknown_and_broken_config_files_are_explained(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("queue = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Settings.load(config_path=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('colour = "blue"\n')
    with pytest.raises(SettingsError, match="unknown setting.*colour"):
        Settings.load(config_path=unknown)


def test_redis_password_never_shown_in_errors(monkeypatch):
    monkeypatch.setenv("ENCODEFLOW_REDIS_URL", "http://:hunter2@host:6379")
    with pytest.raises(SettingsError) as info:
        Settings.load()
    assert "hunter2" not in str(info.value)
    assert redact_url("rediss://user:s3cret@h:6380/0") == "rediss://user:***@h:6380/0"
