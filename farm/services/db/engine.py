"""Open the farm's database: make the engine, bring the schema up to date, hand out sessions.

SQLite (the single-machine default) is shared by several processes at once: the app, the CLI and
every local node. What makes that safe:

- WAL journal, so readers never wait for a writer and a writer never waits for readers;
- ``busy_timeout``, so a writer waits for another writer instead of failing with
  "database is locked";
- write transactions start with ``BEGIN IMMEDIATE``. A deferred transaction that reads and then
  writes fails at once (no busy wait) when another process wrote in between; taking the write
  lock up front makes it wait its turn instead. Read-only sessions keep a deferred ``BEGIN``.
- one process at a time runs the migrations (a lock file next to the database).

On PostgreSQL, ``pg_advisory_lock`` plays the part of the lock file.

A database that goes away for a while (PostgreSQL restarted, a network cut, an SQLite file on a NAS
that vanished or stays locked) is survivable: the pool pings a connection before handing it out and
replaces dead ones, so the first call after the outage works, and :func:`is_unreachable` tells the
callers that may wait it out (the node's processor) an outage from a real error.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session, sessionmaker

from farm.base.errors import FarmError
from farm.base.redact import mask_password

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 10.0
PG_CONNECT_TIMEOUT_S = 10
# A server that vanished without a word (host down, cable out) sends no reset: TCP keepalives notice
# it within about idle + interval * count seconds, instead of a query hanging for the kernel's hours.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# SQLite's words for a file it cannot use for now (a writer holding it, a NAS mount gone).
_SQLITE_OUTAGE = ("database is locked", "database is busy", "unable to open database file", "disk i/o error")
# libpq's words for a refusal that no wait fixes (see is_refusal).
_REFUSALS = (
    "authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "name or service not known",
    "nodename nor servname provided",
)
# Any fixed 64-bit number, the same in every process of every version: "EncoFlow" in ASCII.
PG_MIGRATION_LOCK_KEY = 0x456E636F466C6F77

_READ_ONLY = "encodeflow_read_only"  # execution option: SQLite begins deferred, not immediate


class DatabaseError(FarmError, RuntimeError):
    """The database cannot be opened; the message says which one (never its password) and why.

    ``config`` is true when the settings are wrong (bad URL, refused credentials, no such database,
    a schema newer than this program): waiting cannot fix those, unlike a server that is down.
    """

    def __init__(self, message: str, *, config: bool = False):
        super().__init__(message)
        self.config = config


class Database:
    """An engine and its session factory. Build it with :func:`open_database`."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)
        self._read_sessionmaker = sessionmaker(engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)

    @property
    def url(self) -> str:
        """The URL with the password hidden, fit for logs and error messages."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        ``read_only`` sessions never block on (or block) writers in SQLite; use them for queries.
        """
        factory = self._read_sessionmaker if read_only else self.sessionmaker
        with factory.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"<Database {self.url}>"


def open_database(url: str) -> Database:
    """Connect to ``url``, apply any pending migrations, and return the :class:`Database`.

    Raises :class:`DatabaseError` if the database cannot be reached or its schema is newer than
    this program knows.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseError(
            "the database URL is not a valid SQLAlchemy URL; expected e.g. "
            "postgresql+psycopg://user:password@host/dbname or sqlite:////path/to/encodeflow.db",
            config=True,
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = _create_engine(parsed)
    except (ImportError, sa.exc.ArgumentError, OSError) as exc:
        raise DatabaseError(f"cannot open database {shown}: {driver_reason(exc, parsed)}", config=True) from None
    try:
        _migrate(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except (sa.exc.DBAPIError, OSError) as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot open database {shown}: {driver_reason(exc, parsed)}", config=is_refusal(exc)
        ) from None
    return Database(engine)


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for our migrations, without an ``alembic.ini``."""
    config = Config()
    # Config values go through configparser interpolation, so a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def error_line(exc: BaseException) -> str:
    """The driver's own words, first line, without SQLAlchemy's statement and background link."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached for now (worth waiting for), rather than
    that the statement or the schema is wrong (which waiting does not fix)."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    if exc.orig is not None and type(exc.orig).__module__.startswith("sqlite3"):
        # SQLite raises OperationalError for "no such table" too: only these words are an outage.
        text = str(exc.orig).lower()
        return any(words in text for words in _SQLITE_OUTAGE)
    return True  # PostgreSQL: connection refused or reset, server shutting down, ...


def is_refusal(exc: BaseException) -> bool:
    """Whether the server refused us for good reason (credentials, no such role or database, no
    access rule for this host), rather than being away. libpq reports these on connect with no
    SQLSTATE, so its words are matched; an unknown failure counts as an outage (worth a retry)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(words in text for words in _REFUSALS)


# -- engines -----------------------------------------------------------------------------------


def _create_engine(url: sa.URL) -> sa.Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _create_sqlite_engine(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        # Query options such as sslmode reach the driver as they are, and win over these; without a
        # timeout, an unreachable host would hang the app for minutes.
        defaults = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **PG_KEEPALIVES}
        kwargs["connect_args"] = {k: v for k, v in defaults.items() if k not in url.query}
    return sa.create_engine(url, **kwargs)


def _create_sqlite_engine(url: sa.URL) -> sa.Engine:
    path = sqlite_path(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if path is None:
        # An in-memory database lives and dies with its connection, so keep exactly one.
        kwargs.update(poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **kwargs)
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def sqlite_path(url: sa.URL) -> Path | None:
    """The database file, or None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).expanduser()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (see _sqlite_on_begin); sqlite3's own would be a deferred one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a brief exclusive lock on a new file.
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # WAL is a property of the file: switch only once. Switching needs an exclusive lock that
        # the busy timeout does not cover, so two processes opening a new file both asking for it
        # made one fail with "database is locked" (_migrate also serialises first opens).
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses no committed data
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    if connection.get_execution_options().get(_READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# -- migrations --------------------------------------------------------------------------------


def _migrate(engine: sa.Engine) -> None:
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    if engine.dialect.name == "sqlite" and (path := sqlite_path(engine.url)) is not None:
        # Nothing may connect to a new SQLite file before the first opener made it WAL and
        # migrated it: hold the lock from the first connection on (a few ms once current).
        with _file_lock(path.with_name(path.name + ".migrate-lock")):
            if not _is_current(engine, script):
                with engine.connect() as connection:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                    connection.commit()
        return
    if _is_current(engine, script):
        return  # the usual case, and it takes no lock
    with engine.connect() as connection, _migration_lock(engine, connection):
        # Another process may have migrated while we waited; upgrade is then a no-op.
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


def _is_current(engine: sa.Engine, script: ScriptDirectory) -> bool:
    with engine.execution_options(**{_READ_ONLY: True}).connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = current - known
    if unknown:
        raise DatabaseError(
            f"the database schema is at revision {', '.join(sorted(unknown))}, made by a newer "
            "EncodeFlow than this one; upgrade EncodeFlow on this machine",
            config=True,
        )
    return current == set(script.get_heads())


@contextmanager
def _migration_lock(engine: sa.Engine, connection: sa.Connection) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_lock(PG_MIGRATION_LOCK_KEY)))
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(sa.select(sa.func.pg_advisory_unlock(PG_MIGRATION_LOCK_KEY)))
            connection.commit()
    else:  # SQLite files are locked in _migrate; an in-memory database has one connection
        yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, released when the block ends (or the process dies)."""
    with open(path, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # retries for ~10 s
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def driver_reason(exc: BaseException, url: sa.URL) -> str:
    """The driver's own words, on one line, with the password scrubbed just in case."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split()) or type(original).__name__
    text = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text)
    return mask_password(text, None if url.password is None else str(url.password))
