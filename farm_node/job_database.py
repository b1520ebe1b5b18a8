"""The database as a job's runs use it: it may be away for a while (PostgreSQL restarted, a
network cut, an SQLite file locked or gone).

Progress writes are skipped meanwhile. The writes that matter (mark active, finish, note a retry,
record a failure) wait it out with backoff for at most a budget, the node's lock duration (BullMQ
renews the lock meanwhile), then raise ``DatabaseUnreachable``: the run hands its job back to the
queue. An outage is logged once when it begins and once when it ends, not once per write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from farm.base.backoff import Backoff
from farm.services.db import Database, error_line, is_unreachable, repo
from farm_node.job_errors import DatabaseUnreachable

log = logging.getLogger(__name__)

DB_RETRY_FIRST_S, DB_RETRY_MAX_S = 0.5, 5.0  # backoff between tries while the database is away

T = TypeVar("T")


class JobDatabase:
    """``db`` for the node's runs. ``retry_seconds``: how long a write waits out an outage; the node
    passes its lock duration, since waiting longer would outlive a lock that a Redis cut stopped
    renewing (another node may be running the job by then)."""

    def __init__(self, db: Database, *, node_name: str, retry_seconds: float) -> None:
        self.db = db
        self.node_name = node_name
        self.retry_seconds = retry_seconds
        self._down_since: float | None = None

    async def call(self, call: Callable[..., T], *args: Any, budget: float | None = None, **kwargs: Any) -> T:
        """``call(db, ...)`` in a thread, waiting out an outage for at most ``budget`` seconds
        (default ``retry_seconds``); then ``DatabaseUnreachable``. Other errors are raised at once."""
        budget = self.retry_seconds if budget is None else budget
        deadline = time.monotonic() + budget
        backoff = Backoff(DB_RETRY_FIRST_S, DB_RETRY_MAX_S)
        while True:
            try:
                result = await asyncio.to_thread(call, self.db, *args, **kwargs)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._down(exc)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnreachable(
                        f"the database {self.db.url} did not answer for {budget:.0f} s ({error_line(exc)})"
                    ) from None
                await asyncio.sleep(min(backoff.next(), left))
                continue
            self._up()
            return result

    async def record(self, job_id: str, what: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """A write that goes with a failure BullMQ records anyway: if the database stays away, the
        queue's record stands and the reconciler brings the row in line (or the next run does)."""
        try:
            await self.call(call, *args, **kwargs)
        except DatabaseUnreachable as exc:
            log.warning("job %s: could not record %s: %s; the reconciler will", job_id, what, exc)
        except Exception:
            log.exception("job %s: could not record %s", job_id, what)

    async def record_progress(self, job_id: str, percent: float) -> None:
        """The bar in the database: nice to have, so an outage skips it rather than fail the job."""
        try:
            await asyncio.to_thread(repo.update_progress, self.db, job_id, percent, self.node_name)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._down(exc)
            return
        self._up()

    def _down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "database %s unreachable (%s); progress is not recorded and results wait until it answers again",
                self.db.url,
                error_line(exc),
            )

    def _up(self) -> None:
        if self._down_since is not None:
            log.info("database %s reachable again after %.1f s", self.db.url, time.monotonic() - self._down_since)
            self._down_since = None
