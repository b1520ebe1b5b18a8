"""Exponential backoff for loops that retry through an outage: one policy, one place.

A loop keeps one ``Backoff``, asks it for the pause after each failure and resets it once the
thing it waits for answers again::

    backoff = Backoff(first=0.5, cap=30)
    while not stopping:
        try:
            work()
        except OSError:
            stop.wait(backoff.next())  # 0.5, 1, 2, 4 ... 30, 30
            continue
        backoff.reset()

How the loop waits is its own business (``time.sleep``, ``Event.wait``, ``asyncio.sleep``), and so
is when it gives up: a loop with a time budget sleeps ``min(backoff.next(), left)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Pauses of ``first``, ``first * factor``, ``first * factor**2`` ... never above ``cap``.

    ``jitter`` (0 to 1) takes up to that fraction off each pause at random, so that many clients
    that lost the same server do not all come back in the same instant.
    """

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        if first <= 0 or cap <= 0 or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(
                f"backoff needs first > 0, cap > 0, factor >= 1 and jitter in [0, 1]; "
                f"got first={first}, cap={cap}, factor={factor}, jitter={jitter}"
            )
        self.first = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._random_fraction = random_fraction
        self.failures = 0  # failures in a row since the last reset

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` failures in a row (1 for the first), before jitter."""
        delay = self.first
        for _ in range(max(failures, 1) - 1):  # step by step: a long outage cannot overflow a float
            if delay >= self.cap or self.factor == 1:
                break
            delay *= self.factor
        return min(delay, self.cap)

    def next(self) -> float:
        """Count one more failure and return the pause to take before the next try."""
        self.failures += 1
        delay = self.delay(self.failures)
        if self.jitter:
            delay *= 1 - self.jitter * self._random_fraction()
        return delay

    def reset(self) -> None:
        """It worked: the next failure starts again from ``first``."""
        self.failures = 0
