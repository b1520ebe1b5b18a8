"""What a node makes sure of before it takes jobs: each service answers and is set up right.

A failed check ends the start in one of two ways, so that a service manager does the right thing:

- a configuration error (a refused password, a server that is not Redis, no such bucket or
  database, refused S3 keys) raises ``SettingsError``: the node says which setting and exits 2,
  which the shipped service units do not restart (a restart cannot fix it);
- an outage (a server down, refusing connections or not answering) raises ``ServiceUnavailable``:
  the node says what it saw and exits 1, which they do restart.

Every check is bounded in time; the Redis one is a coroutine, so a stop signal ends it at once.
"""

from __future__ import annotations

import asyncio
import logging

from farm.base.errors import FarmError
from farm.base.settings import ENV_VARS, SettingsError
from farm.services.checks import probe_redis
from farm.services.db.engine import Database, DatabaseError, open_database
from farm.services.storage import RetryPolicy, Storage, StorageError, StorageUnavailable, open_storage

log = logging.getLogger(__name__)

REDIS_CHECK_TIMEOUT_S = 5.0


class ServiceUnavailable(FarmError, RuntimeError):
    """A service the node needs is down or does not answer; worth starting again later."""


def setting(name: str) -> str:
    """How a user sets it: ``ENCODEFLOW_REDIS_URL (--redis-url)``."""
    return f"{ENV_VARS[name]} (--{name.replace('_', '-')})"


async def require_redis(url: str, *, configured: bool) -> None:
    """Redis answers a PING within a few seconds and accepts our credentials.

    ``configured``: the URL is the user's; otherwise it is the data dir's embedded Redis, whose
    password the node did not choose, so any failure of it is an outage.
    """
    result = await probe_redis(url, REDIS_CHECK_TIMEOUT_S)
    if result.ok:
        if "warning" in result.message:
            log.warning("%s", result.message)
        return
    if result.config and configured:
        raise SettingsError(f"{setting('redis_url')}: {result.message}")
    raise ServiceUnavailable(result.message)


async def require_database(url: str, *, source: str) -> Database:
    """The database, opened and migrated (``open_database``, bounded by its connect timeout).

    ``source``: the setting the URL came from, ``database_url`` or (the default SQLite file)
    ``data_dir``; a configuration error names it.
    """
    try:
        return await asyncio.to_thread(open_database, url)
    except DatabaseError as exc:
        if exc.config:
            raise SettingsError(f"{setting(source)}: {exc}") from None
        raise ServiceUnavailable(str(exc)) from None


async def require_storage(url: str, policy: RetryPolicy, *, source: str) -> Storage:
    """The storage, listed and written once (``Storage.check``); ``source`` as for the database."""
    try:
        storage = open_storage(url, policy)
        await asyncio.to_thread(storage.check)
        return storage
    except StorageUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    except StorageError as exc:
        raise SettingsError(f"{setting(source)}: {exc}") from None
