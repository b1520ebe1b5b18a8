"""One settings object, built once at start-up and passed to whoever needs it.

Precedence, highest first: command-line flag, ``ENCODEFLOW_*`` environment variable, the TOML
config file the Settings page writes, the embedded default. Nothing here is read at import time,
so tests (and several farms in one process) can build as many independent settings as they like.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from farm.base import redact
from farm.base.errors import EXIT_USAGE, FarmError

APP_NAME = "encodeflow"
DEFAULT_QUEUE = "transcode"

# Setting name -> environment variable. Only these are part of the public contract.
ENV_VARS = {
    "data_dir": "ENCODEFLOW_DATA_DIR",
    "redis_url": "ENCODEFLOW_REDIS_URL",
    "database_url": "ENCODEFLOW_DATABASE_URL",
    "storage_url": "ENCODEFLOW_STORAGE_URL",
    "queue": "ENCODEFLOW_QUEUE",
    "ffmpeg": "ENCODEFLOW_FFMPEG",
    "prometheus_url": "ENCODEFLOW_PROMETHEUS_URL",
    # Advanced: how storage rides out an outage (farm.services.storage.retry), in seconds; None: the default.
    "storage_retry_seconds": "ENCODEFLOW_STORAGE_RETRY_SECONDS",
    "storage_connect_timeout": "ENCODEFLOW_STORAGE_CONNECT_TIMEOUT",
    "storage_read_timeout": "ENCODEFLOW_STORAGE_READ_TIMEOUT",
}
_SECONDS = ("storage_retry_seconds", "storage_connect_timeout", "storage_read_timeout")
CONFIG_ENV = "ENCODEFLOW_CONFIG"  # path of the config file, for tests and multi-farm setups


class SettingsError(FarmError, ValueError):
    """A setting has a value that cannot work; the message says which and why."""

    exit_code = EXIT_USAGE


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Where the farm's state lives and how to reach its services.

    ``redis_url``, ``database_url`` and ``storage_url`` are ``None`` when not configured; the
    ``effective_*`` properties then give the embedded defaults under ``data_dir``.
    """

    data_dir: Path
    redis_url: str | None = None
    database_url: str | None = None
    storage_url: str | None = None
    queue: str = DEFAULT_QUEUE
    ffmpeg: str | None = None
    prometheus_url: str | None = None
    storage_retry_seconds: float | None = None
    storage_connect_timeout: float | None = None
    storage_read_timeout: float | None = None
    default_preset: str | None = None
    keep_local_farm: bool = False
    notifications: bool = True
    config_path: Path | None = field(default=None, compare=False)

    # -- derived -------------------------------------------------------------------------------
    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def embedded_redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'encodeflow.db'}"

    @property
    def effective_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "storage").resolve().as_uri()

    @property
    def work_root(self) -> Path:
        """Parent of the per-node work dirs, used when a node is given no ``--work-dir``."""
        return self.data_dir / "work"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_path: Path | None = None,
    ) -> Settings:
        """Build settings from flags, environment, config file and defaults, in that order."""
        environ = os.environ if environ is None else environ
        path = config_path or default_config_path(environ)
        from_file = read_config_file(path)
        from_env = {name: environ[var] for name, var in ENV_VARS.items() if environ.get(var)}
        from_flags = {k: v for k, v in (flags or {}).items() if v is not None}

        merged: dict[str, Any] = {}
        for layer in (from_file, from_env, from_flags):
            merged.update(layer)
        unknown = set(merged) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(sorted(unknown))} in {path}; "
                f"known: {', '.join(sorted(f.name for f in dataclasses.fields(cls)))}"
            )
        for name in _SECONDS:  # the environment gives text
            if isinstance(merged.get(name), str):
                merged[name] = _seconds(name, merged[name])
        data_dir = merged.pop("data_dir", None) or platformdirs.user_data_dir(APP_NAME)
        merged.pop("config_path", None)
        settings = cls(data_dir=Path(data_dir).expanduser().resolve(), config_path=path, **merged)
        settings.validate()
        # From here on, a password from the file or a flag is masked in every log line too.
        redact.register_url(settings.redis_url)
        redact.register_url(settings.database_url)
        redact.register_url(settings.prometheus_url)
        return settings

    def validate(self) -> None:
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"ENCODEFLOW_REDIS_URL must start with redis://, rediss:// or unix://, "
                f"got {redact.redact_url(self.redis_url)!r}"
            )
        for problem in (redis_url_problem(self.redis_url), database_url_problem(self.database_url)):
            if problem:
                raise SettingsError(problem)
        if self.storage_url and not self.storage_url.startswith(("s3://", "file:///")):
            raise SettingsError(
                "ENCODEFLOW_STORAGE_URL must be s3://bucket[/prefix] or file:///absolute/dir, "
                f"got {redact.redact_url(self.storage_url)!r}"
            )
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise SettingsError(
                "ENCODEFLOW_PROMETHEUS_URL must be http://host:9090 or https://…, "
                f"got {redact.redact_url(self.prometheus_url)!r}"
            )
        for name in _SECONDS:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 24 * 3600
            ):
                raise SettingsError(
                    f"{ENV_VARS[name]} must be a number of seconds above 0 and at most a day, got {value!r}"
                )
        if not self.queue or any(c in self.queue for c in ": \t\n"):
            raise SettingsError(f"ENCODEFLOW_QUEUE must be a plain name without ':' or spaces, got {self.queue!r}")

    def save(self, path: Path | None = None) -> Path:
        """Write the configurable fields to the config file (what the Settings page calls)."""
        path = path or self.config_path or default_config_path()
        values = {
            name: (str(value) if isinstance(value, Path) else value)
            for name, value in dataclasses.asdict(self).items()
            if name != "config_path" and value is not None
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # The file may hold the Redis and database passwords: readable by its owner only, from
        # the moment it exists.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(tomli_w.dumps(values).encode())
        tmp.replace(path)
        return path


def _seconds(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingsError(f"{ENV_VARS[name]} must be a number of seconds, got {text!r}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc


_ENCODE_HINT = "percent-encode '/', '?', '#' and '@' in a password (as %2F, %3F, %23 and %40)"


def redis_url_problem(url: str | None) -> str | None:
    """Why redis-py would misread this URL, in words that never quote its password; else ``None``.

    A password with an unencoded ``/``, ``?`` or ``#`` moves the rest of it into the path, query or
    fragment, and the driver's own error then quotes part of it ("Port could not be cast to integer
    value as 'first-half'"). Public so that the Settings page's Test can say the same.
    """
    from urllib.parse import urlsplit

    if not url or url.startswith("unix://") or not url.startswith(("redis://", "rediss://")):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        readable = bool(parts.hostname) and re.fullmatch(r"/?\d*", parts.path) is not None
    except ValueError:
        readable = False
    if readable:
        return None
    return (
        f"ENCODEFLOW_REDIS_URL cannot be read as redis[s]://[user:password@]host[:port][/db]: "
        f"{redact.redact_url(url)!r}; {_ENCODE_HINT}"
    )


def database_url_problem(url: str | None) -> str | None:
    """Why SQLAlchemy would misread this URL (an unencoded ``@`` in the password: what follows it
    is taken for the host, and connection errors quote it); else ``None``."""
    if not url or url.startswith("sqlite"):
        return None
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    if "://" in url and authority.count("@") <= 1:
        return None
    return (
        f"ENCODEFLOW_DATABASE_URL cannot be read as dialect+driver://[user:password@]host[:port]/db: "
        f"{redact.redact_url(url)!r}; {_ENCODE_HINT}"
    )
