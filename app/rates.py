"""Events per minute over a sliding window: the Metrics page's "jobs per minute", without Qt.

Job events (``completed``, ``failed``) are counted into wall-clock minute buckets. The time of an
event is taken from its Redis stream id (``<epoch ms>-<seq>``), which is when the node wrote it,
so an event read late (after a reconnect) still lands in the minute it happened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

MINUTE = 60.0


def stream_id_time(stream_id: str | None, default: float | None = None) -> float | None:
    """Epoch seconds of a Redis stream id such as ``"1712345678901-0"``; ``default`` if not one."""
    if not stream_id:
        return default
    head = stream_id.split("-", 1)[0]
    try:
        return int(head) / 1000.0
    except ValueError:
        return default


def minute_start(when: float) -> float:
    """The start (epoch seconds) of the wall-clock minute that holds ``when``."""
    return math.floor(when / MINUTE) * MINUTE


class MinuteRates:
    """Counts of each kind of event per minute, for the last ``window_minutes`` minutes.

    ``add(kind, when)`` counts one event; ``series(now)`` gives the minute starts, oldest first up
    to the current minute, and a list of counts per kind (zero where nothing happened), ready to
    plot. Memory stays bounded: buckets older than the window are dropped as time moves on.
    """

    def __init__(self, kinds: Iterable[str] = ("completed", "failed"), window_minutes: int = 60):
        if window_minutes < 1:
            raise ValueError(f"window_minutes must be at least 1, got {window_minutes}")
        self.kinds = tuple(kinds)
        self.window_minutes = window_minutes
        self._buckets: dict[float, dict[str, int]] = {}

    def add(self, kind: str, when: float | None = None, now: float | None = None) -> bool:
        """Count one ``kind`` event at ``when`` (default: now). False if ignored (unknown kind, too old)."""
        if kind not in self.kinds:
            return False
        now = time.time() if now is None else now
        when = now if when is None else when
        start = minute_start(when)
        if start < self._oldest(now):
            return False
        bucket = self._buckets.setdefault(start, dict.fromkeys(self.kinds, 0))
        bucket[kind] += 1
        self._prune(now)
        return True

    def total(self, kind: str, now: float | None = None) -> int:
        """``kind`` events within the window."""
        oldest = self._oldest(time.time() if now is None else now)
        return sum(b[kind] for start, b in self._buckets.items() if start >= oldest and kind in b)

    def series(self, now: float | None = None) -> tuple[list[float], dict[str, list[int]]]:
        """(minute starts, {kind: counts}) for every minute of the window, oldest first."""
        now = time.time() if now is None else now
        self._prune(now)
        current = minute_start(now)
        starts = [current - MINUTE * i for i in range(self.window_minutes - 1, -1, -1)]
        counts = {kind: [self._buckets.get(s, {}).get(kind, 0) for s in starts] for kind in self.kinds}
        return starts, counts

    def _oldest(self, now: float) -> float:
        return minute_start(now) - MINUTE * (self.window_minutes - 1)

    def _prune(self, now: float) -> None:
        oldest = self._oldest(now)
        for start in [s for s in self._buckets if s < oldest]:
            del self._buckets[start]
