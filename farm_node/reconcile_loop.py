"""The node's periodic reconcile pass (see ``farm/services/reconciler.py`` for what a pass fixes).

Every node runs this loop; a Redis key set with ``SET NX PX`` makes sure that one pass runs per
interval on the whole farm, whichever node gets there first. The key is not deleted after the
pass: it expires on its own, so a node that dies mid-pass blocks the others for one interval at
most. The interval is jittered so that nodes started together do not all ask at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid

import redis.asyncio as aioredis

from farm.domain import defaults
from farm.domain.keyspace import Keyspace
from farm.services.db import error_line
from farm.services.reconciler import Reconciler

log = logging.getLogger(__name__)

JITTER = 0.2  # each wait is the interval +/- 20 %


async def take_turn(redis: aioredis.Redis, queue: str, holder: str, ttl_s: float) -> bool:
    """True if this node runs the pass of this interval (no one else has in the last ``ttl_s``)."""
    return bool(await redis.set(Keyspace(queue).reconcile_lock, holder, nx=True, px=max(1, int(ttl_s * 1000))))


async def reconcile_forever(
    reconciler: Reconciler,
    redis: aioredis.Redis,
    queue: str,
    node_name: str,
    stopping: asyncio.Event,
    interval_s: float = defaults.RECONCILE_INTERVAL_S,
) -> None:
    """Run a pass about every ``interval_s`` until ``stopping`` is set; errors are logged, not fatal."""
    holder = f"{node_name}:{uuid.uuid4().hex[:8]}"
    failing_since: float | None = None  # one warning per outage, not one per pass
    while not stopping.is_set():
        wait = interval_s * random.uniform(1 - JITTER, 1 + JITTER)
        try:
            await asyncio.wait_for(stopping.wait(), timeout=wait)
            return
        except TimeoutError:
            pass
        try:
            # The key lives a little less than an interval, so the next turn is free on time.
            if not await take_turn(redis, queue, holder, interval_s * (1 - JITTER) * 0.9):
                continue
            began = time.monotonic()
            actions = await reconciler.run_once()
            log.debug("reconcile pass: %d change(s) in %.2f s", len(actions), time.monotonic() - began)
            if failing_since is not None:
                log.info("reconcile passes work again after %.0f s", time.monotonic() - failing_since)
                failing_since = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis or the database away: try again next interval
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("reconcile pass failed: %s; trying again every interval", error_line(exc))
            else:
                log.debug("reconcile pass failed again: %s", error_line(exc))
