"""Riding out storage outages: retry with backoff for a while, then one clear error.

Both backends run each operation through ``RetryPolicy.run``: an error the backend calls transient
(an endpoint that refuses or times out, a NAS that answers EIO or ESTALE) is retried with
exponential backoff until ``give_up_after`` seconds have passed since the first failure, then
``StorageUnavailable`` says which storage did not answer, for how long, why, and what to do.

The knobs are settings (``ENCODEFLOW_STORAGE_RETRY_SECONDS``, ``…_CONNECT_TIMEOUT``, ``…_READ_TIMEOUT``
or the config file; ``RetryPolicy.from_settings``); the defaults ride out a short outage or a
restart of the storage server and give up in about a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from farm.base.backoff import Backoff
from farm.base.settings import Settings
from farm.services.storage.base import StorageError, TransferCancelled

log = logging.getLogger(__name__)

T = TypeVar("T")


class StorageUnavailable(StorageError):
    """The storage did not answer (down, unreachable, too slow) for as long as we were willing to wait.

    Worth retrying later, unlike a refused request (missing bucket, bad credentials, no such key).
    """


@dataclass(frozen=True)
class RetryPolicy:
    give_up_after: float = 60.0  # seconds from the first failure to the error
    first_delay: float = 0.5
    max_delay: float = 10.0
    connect_timeout: float = 10.0  # S3: per request (botocore's own, bounded retries run inside)
    read_timeout: float = 60.0  # S3: seconds without a byte before a request counts as failed

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy ``farm.base.settings.Settings`` asks for (its ``storage_*`` fields; unset: the defaults)."""
        values = {
            "give_up_after": settings.storage_retry_seconds,
            "connect_timeout": settings.storage_connect_timeout,
            "read_timeout": settings.storage_read_timeout,
        }
        return cls(**{name: float(value) for name, value in values.items() if value is not None})

    def run(
        self,
        call: Callable[[], T],
        *,
        transient: Callable[[BaseException], str | None],
        unavailable: Callable[[float, int, str], StorageUnavailable],
        cancel: threading.Event | None = None,
        what: str = "storage call",
    ) -> T:
        """``call()`` until it succeeds, fails for good, or has failed for ``give_up_after`` seconds.

        ``transient(exc)`` says why an error may pass (a short reason, e.g. "connection refused"),
        or ``None`` for one that will not (raised at once). ``unavailable(seconds, tries, reason)``
        builds the final error. A set ``cancel`` ends the wait at once, and a try that fails once it
        is set raises ``TransferCancelled`` (not the outage's error).
        """
        first_failure = None
        backoff = Backoff(first=self.first_delay, cap=self.max_delay)
        tries = 0
        while True:
            tries += 1
            try:
                return call()
            except Exception as exc:
                if cancel is not None and cancel.is_set() and not isinstance(exc, TransferCancelled):
                    # A cancel during an outage is a cancel, whatever the last try ran into.
                    raise TransferCancelled(f"{what}: cancelled") from None
                reason = transient(exc)
                if reason is None:
                    raise
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                waited = now - first_failure
                left = self.give_up_after - waited
                if left <= 0:
                    raise unavailable(waited, tries, reason) from None
                pause = min(backoff.next(), left)
                log.warning("%s failed (%s); retry %d in %.1f s", what, reason, tries, pause)
            if cancel is not None:
                cancel.wait(pause)
            else:
                time.sleep(pause)


def unavailable_message(url: str, action: str, seconds: float, tries: int, reason: str, advice: str) -> str:
    """The one wording of "storage did not answer", shared by the backends (users see it on jobs)."""
    tried = "once" if tries == 1 else f"{tries} times"
    return (
        f"storage {url} did not answer (tried {tried} over {seconds:.0f} s; last: {reason}) "
        f"when trying to {action}; {advice}"
    )
