"""The node's heartbeat: samples CPU and memory, publishes the node's status, follows remote control.

One loop, one tick per ``interval`` (default 1 s). Each tick samples CPU and memory; every
``publish_every`` ticks (default 5) the node writes its status key and appends the buffered samples
in one Redis transaction, then re-reads its control key. The charts keep a 1 s series (600 samples
= 10 minutes) while an idle node talks to Redis once every 5 s; the status key's TTL
(``farm.domain.defaults.NODE_STATUS_TTL_S``, 20 s) covers three missed publishes. A change the panel must show
at once (idle, busy, paused, draining, or a job started or ended) is published on the next tick
instead of waiting for the batch.
A pub/sub listener on the control channel delivers remote control at once; the re-read on every
beat catches what the listener missed.

Each step has its own ``try/except``, so a failing step never stops the loop and is logged once
when it starts failing and once when it recovers, not every tick. While Redis cannot be reached
the loop keeps sampling (``last_sample`` and ``on_sample`` stay live for the metrics exporter) but
tries Redis again only after an exponential backoff: 2, 4, 8 ... intervals, capped at 5 s, so that
the node is listed online again within seconds of Redis coming back (a restart takes the node
off the list for as long as the outage, plus at most this cap and one ``step_timeout``).
Every Redis call is bounded by ``step_timeout``, and ``run`` returns as soon as ``stop`` is set,
cancelling whatever call is in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from farm.base.backoff import Backoff
from farm.domain import defaults
from farm.domain.nodes import NodeStatus
from farm.services.registry import NodeRegistryWriter, control_listener

log = logging.getLogger(__name__)

FIRST_SAMPLE_DELAY = 0.25  # lets the primed CPU counter cover a measurable span before the first beat
MAX_PENDING_SAMPLES = 600  # what the registry keeps anyway; older ones are dropped during an outage


@dataclass(frozen=True)
class NodeInfo:
    """What does not change while the node runs."""

    concurrency: int = 1
    version: str = ""
    ffmpeg_version: str = ""
    ffmpeg_path: str = ""
    encoders: Sequence[str] = ()
    tags: Sequence[str] = ()
    metrics_url: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class NodeActivity:
    """What the node is doing now: ``status`` is idle, busy, draining, paused or disk full;
    ``running`` holds one ``{"jobId", "progress", "name"?}`` per job in hand; ``reason`` says why
    a node takes no jobs when its status alone does not (how full its disk is)."""

    status: str = "idle"
    running: Sequence[Mapping[str, Any]] = ()
    reason: str = ""


class Heartbeat:
    """Keeps the node's registry entry fresh and tells the node when remote control changes.

    ``activity`` is called on every beat, on the event loop, so it must be quick. The optional
    ``on_desired_state(state)`` (function or coroutine function) is called with the desired
    state when it is first read and whenever it changes; ``on_sample(sample)`` after every sample.
    """

    def __init__(
        self,
        writer: NodeRegistryWriter,
        activity: Callable[[], NodeActivity],
        info: NodeInfo,
        *,
        interval: float = defaults.HEARTBEAT_INTERVAL_S,
        publish_every: int = defaults.HEARTBEAT_PUBLISH_EVERY,
        on_desired_state: Callable[[str], Awaitable[None] | None] | None = None,
        on_sample: Callable[[dict[str, float]], None] | None = None,
        listen: bool = True,
        max_backoff: float = 5.0,
        step_timeout: float = 5.0,
    ) -> None:
        self.writer = writer
        self.activity = activity
        self.info = info
        self.interval = interval
        self.publish_every = max(1, publish_every)
        self.on_desired_state = on_desired_state
        self.on_sample = on_sample
        self.listen = listen
        self.max_backoff = max_backoff
        self.step_timeout = step_timeout

        self.started_at = time.time()
        self.last_sample: dict[str, float] | None = None  # {"t", "cpu", "mem"}, read by the exporter
        self.last_rss = 0
        self.last_activity = NodeActivity()
        self.desired_state: str | None = None
        self.outage_since: float | None = None  # epoch s of the first failed publish of an outage
        self.published = 0
        self._pending: list[dict[str, float]] = []  # samples not yet in Redis
        self._beats = 0

        self._process = psutil.Process()
        self._retry_at = 0.0  # monotonic time before which Redis is not tried again
        # After the first failed publish Redis is left alone for two intervals, then twice as long each time.
        self._backoff = Backoff(first=2 * interval, cap=max_backoff)
        self._failing: set[str] = set()
        self._listener: asyncio.Task[None] | None = None

    @property
    def failures(self) -> int:
        """Publishes that failed in a row."""
        return self._backoff.failures

    @property
    def outage_seconds(self) -> float:
        """How long Redis has been unreachable (0 while heartbeats get through)."""
        return 0.0 if self.outage_since is None else time.time() - self.outage_since

    def health(self, unhealthy_after: float = 60.0) -> dict[str, Any]:
        """For ``/health``: the node's status, ``unhealthy`` once Redis has been gone that long.

        Reads only what the last beat stored, so the exporter's thread may call it.
        """
        outage = self.outage_seconds
        report: dict[str, Any] = {"status": self.last_activity.status, "running": len(self.last_activity.running)}
        if outage:
            report["redis_unreachable_s"] = round(outage, 1)
            if outage >= unhealthy_after:
                report["status"] = "unhealthy"
        return report

    # -- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop`` is set, then take the node out of the registry."""
        psutil.cpu_percent(interval=None)  # the next call measures from here
        loop = asyncio.create_task(self._loop(), name=f"heartbeat-{self.writer.name}")
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({loop, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if loop in done:
                loop.result()  # the steps catch everything, so only a bug gets here; surface it
        finally:
            for task in (loop, stopped, self._listener):
                await _cancel(task)
            self._listener = None
            await self._deregister()

    async def _loop(self) -> None:
        await asyncio.sleep(min(self.interval, FIRST_SAMPLE_DELAY))
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    async def beat(self) -> None:
        """One tick: sample; every ``publish_every`` ticks or when the activity changed, unless
        backing off, publish the buffered samples with the status and follow remote control.
        Sampling every second keeps the charts at 1 s; publishing every fifth second is what lets
        an idle node sleep (docs/benchmarks.md)."""
        sample = self._step("sample", self._take_sample)
        if sample is not None:
            self._pending = (self._pending + [sample])[-MAX_PENDING_SAMPLES:]
        self._beats += 1
        if self._beats % self.publish_every and self.published and not self._activity_changed():
            return
        if time.monotonic() < self._retry_at:
            return
        if await self._publish(self._pending):
            self._pending = []
            await self._follow_control()
            self._ensure_listener()

    # -- steps ---------------------------------------------------------------------------------
    def _activity_changed(self) -> bool:
        """Whether status or running jobs differ from the last publish (progress alone does not count)."""
        now = self._step("activity", self.activity)
        if now is None:
            return False
        before = self.last_activity
        return now.status != before.status or [job.get("jobId") for job in now.running] != [
            job.get("jobId") for job in before.running
        ]

    def _take_sample(self) -> dict[str, float]:
        sample = {
            "t": round(time.time(), 3),
            "cpu": psutil.cpu_percent(interval=None),
            "mem": psutil.virtual_memory().percent / 100,
        }
        self.last_rss = self._process.memory_info().rss
        self.last_sample = sample
        if self.on_sample is not None:
            self._step("on_sample", self.on_sample, sample)
        return sample

    async def _publish(self, samples: list[dict[str, float]]) -> bool:
        activity = self._step("activity", self.activity) or self.last_activity
        self.last_activity = activity
        status = self._status(activity)
        try:
            await asyncio.wait_for(self.writer.publish(status, samples), self.step_timeout)
        except Exception as exc:  # any failure: back off, keep beating
            self._publish_failed(exc)
            return False
        if self.outage_since is not None:
            log.info("node %s: heartbeats reach Redis again after %.1f s", self.writer.name, self.outage_seconds)
        self._backoff.reset()
        self.outage_since = None
        self.published += 1
        return True

    def _publish_failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._backoff.next()
        if self.outage_since is None:
            self.outage_since = time.time()
            # A timeout carries no message; say what it means rather than print "TimeoutError: ".
            reason = str(exc) or f"no answer within {self.step_timeout:g} s"
            log.warning(
                "node %s: cannot publish heartbeat (%s: %s); retrying with backoff up to %.0f s",
                self.writer.name,
                type(exc).__name__,
                reason,
                self.max_backoff,
            )

    async def _follow_control(self) -> None:
        try:
            state = await asyncio.wait_for(self.writer.desired_state(), self.step_timeout)
        except Exception:
            self._failed("control", "cannot read the control key")
            return
        self._recovered("control")
        await self._apply_desired(state)

    async def _apply_desired(self, state: str) -> None:
        if state == self.desired_state:
            return
        if self.desired_state is not None:  # the first read is the start-up state, not a change
            log.info("node %s: desired state %s -> %s", self.writer.name, self.desired_state, state)
        self.desired_state = state
        if self.on_desired_state is None:
            return
        try:
            result = self.on_desired_state(state)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("node %s: on_desired_state(%r) failed", self.writer.name, state)

    def _ensure_listener(self) -> None:
        if not self.listen:
            return
        if self._listener is not None and not self._listener.done():
            return
        if self._listener is not None and not self._listener.cancelled() and self._listener.exception():
            log.debug("node %s: control listener stopped: %r", self.writer.name, self._listener.exception())
        w = self.writer
        self._listener = asyncio.create_task(
            control_listener(w.redis, w.queue, w.name, self._apply_desired), name=f"control-{w.name}"
        )

    async def _deregister(self) -> None:
        if not self.published or self.failures:
            return  # never registered, or Redis is down: the key expires on its own
        try:
            await asyncio.wait_for(self.writer.remove(), self.step_timeout)
        except Exception as exc:
            log.warning(
                "node %s: could not mark itself offline (%s); its key expires on its own",
                self.writer.name,
                str(exc) or f"no answer from Redis within {self.step_timeout:g} s",
            )

    # -- helpers -------------------------------------------------------------------------------
    def _status(self, activity: NodeActivity) -> NodeStatus:
        info, sample = self.info, self.last_sample or {}
        return NodeStatus(
            name=self.writer.name,
            host=info.host,
            pid=info.pid,
            status=activity.status,
            cpu=sample.get("cpu", 0.0),
            memory=sample.get("mem", 0.0),
            rss=self.last_rss,
            concurrency=info.concurrency,
            running=[dict(job) for job in activity.running],
            ffmpeg_version=info.ffmpeg_version,
            ffmpeg_path=info.ffmpeg_path,
            encoders=list(info.encoders),
            tags=list(info.tags),
            version=info.version,
            started_at=self.started_at,
            last_seen=time.time(),
            metrics_url=info.metrics_url,
            reason=activity.reason,
        )

    def _step(self, name: str, func: Callable[..., Any], *args: Any) -> Any:
        try:
            result = func(*args)
        except Exception:
            self._failed(name, f"{name} failed")
            return None
        self._recovered(name)
        return result

    def _failed(self, step: str, message: str) -> None:
        if step not in self._failing:
            self._failing.add(step)
            log.warning("node %s: %s; will keep trying every beat", self.writer.name, message, exc_info=True)

    def _recovered(self, step: str) -> None:
        if step in self._failing:
            self._failing.discard(step)
            log.info("node %s: %s works again", self.writer.name, step)


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})  # unlike ``await task``, lets a cancellation of the caller through
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
