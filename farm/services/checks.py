"""Can this farm reach its services? One check per service, for the Settings page's Test buttons
and the CLI.

Each check blocks for a few seconds at most (short connect and read timeouts) and never raises:
it returns a ``CheckResult`` whose message says what was found (server and version) or, on
failure, exactly what went wrong and what to do. Messages never hold a password.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aioredis
import sqlalchemy as sa

from farm.base.redact import mask_password, redact_url, url_password
from farm.base.settings import database_url_problem, redis_url_problem
from farm.services.db.engine import driver_reason, sqlite_path
from farm.services.storage import LocalStorage, StorageError, open_storage

if TYPE_CHECKING:
    from farm.services.storage.s3 import S3Storage

TIMEOUT_S = 3
MIN_REDIS_VERSION = (6, 2)  # what BullMQ's scripts and the node registry rely on


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    # The settings are wrong (refused password, not a Redis server, missing bucket): waiting and
    # trying again cannot fix it, unlike a server that is down or does not answer.
    config: bool = False

    def __bool__(self) -> bool:
        return self.ok


# -- Redis -------------------------------------------------------------------------------------


def check_redis(url: str, timeout: float = TIMEOUT_S) -> CheckResult:
    """``probe_redis`` for synchronous callers (the CLI, the panel's background tasks)."""
    return asyncio.run(probe_redis(url, timeout))


async def probe_redis(url: str, timeout: float = TIMEOUT_S) -> CheckResult:
    """PING the server, then report its version and warn about settings a farm should not run with.

    A coroutine, so that a node starting up can be stopped in the middle of it.
    """
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        return CheckResult(
            False,
            f"{shown!r} is not a Redis URL; use redis://host:6379/0, rediss://… (TLS) or unix:///path",
            config=True,
        )
    problem = redis_url_problem(url)
    if problem:  # the driver would misread it, and its error would quote part of the password
        return CheckResult(False, problem, config=True)
    try:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except (ValueError, redis.RedisError) as exc:
        return CheckResult(False, _scrub(f"the Redis URL {shown!r} cannot be used: {exc}", url), config=True)
    try:
        await client.ping()
        info = await client.info("server")
        policy = await _config_value(client, "maxmemory-policy")
    except redis.RedisError as exc:
        return redis_failure(exc, url, timeout)
    finally:
        await client.aclose()

    version = str(info.get("redis_version", "?"))
    found = f"Redis {version} at {_redis_location(url)}"
    if _version_tuple(version) < MIN_REDIS_VERSION:
        return CheckResult(
            False,
            f"{found} is too old: EncodeFlow needs Redis {'.'.join(map(str, MIN_REDIS_VERSION))} or newer",
            config=True,
        )
    if policy and policy != "noeviction":
        found += f" (warning: maxmemory-policy is {policy}; use noeviction, or queued jobs can vanish)"
    return CheckResult(True, found)


def redis_failure(exc: redis.RedisError, url: str, timeout: float) -> CheckResult:
    """What a Redis error means for the user of ``url`` (whose commands time out after ``timeout``
    seconds): one line, no password, and whether it is a configuration error."""
    where = _redis_location(url)
    needs_password = CheckResult(
        False, f"Redis at {where} needs a password; put it in the URL (redis://:PASSWORD@host:port/0)", config=True
    )
    if isinstance(exc, redis.AuthenticationError):
        if not _redis_url_fields(url).get("password"):
            return needs_password
        return CheckResult(
            False,
            _scrub(
                f"Redis at {where} refused the credentials ({str(exc).rstrip('.')}); put the right password "
                "in the URL (redis://:PASSWORD@host:port/0)",
                url,
            ),
            config=True,
        )
    if isinstance(exc, redis.TimeoutError):
        return CheckResult(
            False,
            no_answer_from_redis(url, timeout) + "; check the host and port, and that no firewall drops the connection",
        )
    if isinstance(exc, redis.ConnectionError):
        return CheckResult(
            False,
            _scrub(
                f"cannot connect to Redis at {where}: {_connection_reason(exc)}; check the URL and that "
                "the server is running",
                url,
            ),
            config=_unknown_host(exc),
        )
    if isinstance(exc, redis.ResponseError):
        if str(exc).startswith("NOAUTH"):
            return needs_password
        return CheckResult(False, _scrub(f"Redis at {where} answered with an error: {exc}", url), config=True)
    return CheckResult(
        False, _scrub(f"the server at {where} does not speak Redis ({exc}); check the host and port", url), config=True
    )


def no_answer_from_redis(url: str, timeout: float) -> str:
    """What a user is told about a Redis that accepts connections but does not answer (a server
    that hangs, a link that drops packets): not that the farm is down, which it may not be."""
    return f"no answer from Redis at {redact_url(url)} within {timeout:g} s"


def _redis_location(url: str) -> str:
    kwargs = _redis_url_fields(url)
    if kwargs.get("path"):
        return str(kwargs["path"])
    location = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    db = kwargs.get("db")
    return f"{location} (db {db})" if db else location


def _redis_url_fields(url: str) -> dict[str, Any]:
    try:
        fields: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        return fields
    except ValueError:
        return {}


def _connection_reason(exc: Exception) -> str:
    """redis-py's "Error 111 connecting to host:port. Connection refused." -> "Connection refused"."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        cause = None
    if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
        return os.strerror(cause.errno)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = " ".join(str(exc).split())
    match = re.match(r"Error -?\d+ (?:connecting to|while writing to) .*?\. (.+?)\.?$", text)
    return match.group(1) if match else (text or type(exc).__name__)


def _unknown_host(exc: Exception) -> bool:
    """A host name that DNS says does not exist: a typo in the URL, not an outage."""
    cause = exc.__cause__
    return isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME


async def _config_value(client: aioredis.Redis, name: str) -> str | None:
    # Managed services (ElastiCache, Upstash...) often refuse CONFIG; that is not a failure.
    try:
        return (await client.config_get(name)).get(name)
    except redis.ResponseError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)[:3]
    return tuple(int(n) for n in numbers) if numbers else (0,)


def _scrub(text: str, url: str) -> str:
    """Belt and braces: a driver's own words might quote the password back."""
    return mask_password(text, url_password(url))


# -- database ----------------------------------------------------------------------------------


def check_database(url: str, timeout: float = TIMEOUT_S) -> CheckResult:
    """Connect, run ``SELECT 1``, and report the server (or SQLite file) and its version."""
    problem = database_url_problem(url) if "://" in (url or "") else None
    if problem:  # the driver would misread it, and its error would quote part of the password
        return CheckResult(False, problem)
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return CheckResult(
            False,
            "the database URL is not a valid SQLAlchemy URL; expected e.g. "
            "postgresql+psycopg://user:password@host/dbname or sqlite:////path/to/encodeflow.db",
        )
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = max(1, int(timeout))
    elif backend == "mysql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = max(1, int(timeout))
    elif backend == "sqlite":
        connect_args["timeout"] = timeout
        path = sqlite_path(parsed)
        if path is not None and not path.parent.is_dir():
            # The app creates the folder when it opens the database; say so rather than fail.
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return CheckResult(
                    False,
                    f"cannot create the folder {path.parent} for the SQLite "
                    f"database: {exc.strerror or exc}; choose another path",
                )
    try:
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        return CheckResult(
            False,
            f"cannot use database {shown}: {driver_reason(exc, parsed)}; install its driver or fix the URL's scheme",
        )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            found = _describe_database(engine, connection, parsed)
    except (sa.exc.DBAPIError, OSError) as exc:
        return CheckResult(False, f"cannot connect to database {shown}: {driver_reason(exc, parsed)}")
    finally:
        engine.dispose()
    return CheckResult(True, found)


def _describe_database(engine: sa.Engine, connection: sa.Connection, url: sa.URL) -> str:
    version = ".".join(str(part) for part in (engine.dialect.server_version_info or ()))
    if engine.dialect.name == "sqlite":
        path = sqlite_path(url)
        return f"SQLite {version}, {'in memory' if path is None else f'file {path}'}"
    names = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB", "mssql": "SQL Server"}
    name = names.get(engine.dialect.name, engine.dialect.name)
    where = f"{url.host or 'localhost'}{f':{url.port}' if url.port else ''}"
    database = f", database {url.database!r}" if url.database else ""
    return f"{name} {version} at {where}{database}"


# -- storage -----------------------------------------------------------------------------------


def check_storage(url: str, credentials: tuple[str, str] | None = None) -> CheckResult:
    """Open the storage the URL names, then list and write a probe object (``Storage.check``).

    ``credentials`` (access key id, secret) test S3 with keys not yet in the environment, such as
    the ones just typed on the Settings page; otherwise boto3's usual chain applies.
    """
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    try:
        storage = open_storage(url)
        if credentials and not isinstance(storage, LocalStorage):
            storage = _with_credentials(cast("S3Storage", storage), credentials)
        storage.check()
    except StorageError as exc:
        return CheckResult(False, str(exc))
    except Exception as exc:  # an unexpected library error still deserves words, not a traceback
        return CheckResult(False, f"cannot use storage {shown}: {type(exc).__name__}: {exc}")
    if isinstance(storage, LocalStorage):
        return CheckResult(True, f"folder {storage.root} is readable and writable")
    s3 = cast("S3Storage", storage)  # storage URLs name a folder or an S3 bucket
    prefix = f", prefix {s3.prefix!r}" if s3.prefix else ""
    return CheckResult(True, f"bucket {s3.bucket!r} at {s3.endpoint}{prefix} is readable and writable")


def _with_credentials(storage: S3Storage, credentials: tuple[str, str]) -> S3Storage:
    import boto3

    from farm.services.storage.s3 import S3Storage

    key_id, secret = credentials
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
    return S3Storage(storage.bucket, storage.prefix, session=session)


# -- Prometheus (optional) -----------------------------------------------------------------------


def check_prometheus(url: str | None, timeout: float = TIMEOUT_S) -> CheckResult:
    """Ask Prometheus how many EncodeFlow nodes it scrapes. No URL is fine: the setting is optional."""
    from farm.services.prometheus import PrometheusClient, PrometheusError

    if not url:
        return CheckResult(True, "not set: the Metrics page shows the last 10 minutes from Redis")
    try:
        client = PrometheusClient(url, timeout=timeout)
        result = client.query("count(worker_cpu_usage)")
    except PrometheusError as exc:
        return CheckResult(False, str(exc))
    nodes = int(float(result[0]["value"][1])) if result else 0
    if not nodes:
        return CheckResult(
            True,
            f"Prometheus at {client.shown_url} answers, but scrapes no EncodeFlow node yet; "
            "add the nodes' metrics ports to its scrape config (packaging/prometheus)",
        )
    plural = "s" if nodes != 1 else ""
    return CheckResult(True, f"Prometheus at {client.shown_url} scrapes {nodes} EncodeFlow node{plural}")
