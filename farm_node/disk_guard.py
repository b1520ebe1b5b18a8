"""A node whose work dir fills up: the job goes back to the queue for a node with room, without
using one of its attempts, and this node takes no job until there is room again.

A full disk is the node's problem, not the job's. Counted as a failed attempt, a node that fails
fast (and so is idle first) took every retry of a job and failed it for good beside a healthy
idle node. Instead:

- before downloading, the processor compares the input's size with the free space, and a job
  whose input does not fit is handed back at once; one that fills the disk later (FFmpeg's
  output, the upload's temp file) is handed back when ENOSPC shows;
- the node then says "disk full" (heartbeat status and reason, ``worker_disk_full``, one log
  line) and pauses itself until the work dir has as much free space as the job held when the
  disk filled, or ``retry_after`` passed (a smaller job may fit), checking every few seconds;
- a job goes back to the queue this way only while some other online node has not refused it
  for room too (a set per job in Redis). Once every node has, nothing is gained by waiting: the
  run counts as a failed attempt like any other error, and after its attempts the job fails with
  the ``WorkDirFull`` reason, which says which node and how much room.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from farm.domain.keyspace import Keyspace
from farm_node.metrics import NodeMetrics

log = logging.getLogger(__name__)

RETRY_AFTER_S = 60.0  # a full node tries jobs again after this long, even without more room
POLL_S = 2.0  # how often a full node looks at its free space
REFUSED_TTL_S = 3600  # how long a job remembers the nodes that had no room for it


class DiskGuard:
    """The work dir's room for jobs, and the node's pause while it has none."""

    def __init__(
        self,
        work_dir: Path,
        node: str,
        *,
        pause: Callable[[], Awaitable[None]],
        resume: Callable[[], None],
        metrics: NodeMetrics | None = None,
        retry_after: float = RETRY_AFTER_S,
    ) -> None:
        self.work_dir = work_dir
        self.node = node
        self.pause, self.resume = pause, resume
        self.metrics = metrics
        self.retry_after = retry_after
        self.needed: int | None = None  # what the job it had no room for held or needed; None: not full
        self.full_since = 0.0
        self.paused = False

    @property
    def full(self) -> bool:
        return self.needed is not None

    def free(self) -> int:
        return shutil.disk_usage(self.work_dir).free

    @property
    def reason(self) -> str:
        """For the heartbeat: what a user reads beside "disk full"."""
        if self.needed is None:
            return ""
        return (
            f"work dir {self.work_dir} has {_mb(self.free())} free; a job needed about {_mb(self.needed)}; "
            "free some space there"
        )

    async def no_room(self, needed: int, someone_else_may: bool) -> None:
        """The work dir had no room for a job needing about ``needed`` bytes: say so, and while another
        node may take the job (``someone_else_may``), take no more jobs until there is room."""
        if self.needed is None:
            log.warning(
                "work dir %s is full (%s free, a job needs about %s): %s",
                self.work_dir,
                _mb(self.free()),
                _mb(needed),
                "taking no jobs until there is room"
                if someone_else_may
                else "no other node has room, so its jobs use their attempts",
            )
        self.needed = max(needed, self.needed or 0)
        self.full_since = time.monotonic()
        if self.metrics is not None:
            self.metrics.set_disk_full(True)
        if someone_else_may and not self.paused:
            self.paused = True
            await self.pause()

    async def watch(self, stop: asyncio.Event) -> None:
        """While full, look at the free space every ``POLL_S`` and take jobs again once there is room."""
        while not stop.is_set():
            if self.needed is not None:
                self._check()
            try:
                await asyncio.wait_for(stop.wait(), POLL_S)
            except TimeoutError:
                pass

    def _check(self) -> None:
        try:
            free = self.free()
        except OSError as exc:  # the work dir vanished: the next job says so
            log.debug("free space of %s unknown: %s", self.work_dir, exc)
            return
        waited = time.monotonic() - self.full_since
        if free < (self.needed or 0) and waited < self.retry_after:
            return
        log.info("work dir %s has %s free: taking jobs again", self.work_dir, _mb(free))
        self.needed = None
        if self.metrics is not None:
            self.metrics.set_disk_full(False)
        if self.paused:
            self.paused = False
            self.resume()


async def someone_else_may_have_room(redis: Any, queue: str, node: str, job_id: str) -> bool:
    """Record that ``node`` had no room for the job; whether an online node has not said so yet."""
    keys = Keyspace(queue)
    refused_key = keys.no_room(job_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.sadd(refused_key, node)
        pipe.expire(refused_key, REFUSED_TTL_S)
        pipe.smembers(refused_key)
        pipe.zrange(keys.nodes, 0, -1)
        *_, refused, known = await pipe.execute()
    others = [name for name in known if name not in refused]
    if not others:
        return False
    online = await redis.exists(*[keys.node(name) for name in others])
    return int(online) > 0


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
