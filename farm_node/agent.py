"""The farm node: a BullMQ worker plus its heartbeat, control listeners and metrics exporter.

``FarmNode.run()`` reads top to bottom: claim the node's name and work dir, open the services, sweep
the work dir (farm_node/workdir.py), start the helpers, work until asked to stop, then tear
everything down in ``finally``. Stopping is two-stage (see ``request_stop``): the first request
drains, the second hands running jobs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Worker

from farm import __version__
from farm.base.backoff import Backoff
from farm.base.settings import Settings, SettingsError
from farm.base.untrusted import shown
from farm.domain import defaults
from farm.domain.keyspace import Keyspace
from farm.domain.media import ffmpeg_encoders, ffmpeg_version, find_ffmpeg
from farm.domain.nodes import check_node_name
from farm.services.db import Database
from farm.services.embedded import resolve_redis_url
from farm.services.queue import REDIS_READ_TIMEOUT_S, QueueClient, redis_client
from farm.services.reconciler import Reconciler
from farm.services.registry import NodeRegistryWriter, host_node_name
from farm.services.storage import RetryPolicy, Storage
from farm_node import startup
from farm_node.disk_guard import DiskGuard, someone_else_may_have_room
from farm_node.heartbeat import Heartbeat, NodeActivity, NodeInfo
from farm_node.metrics import NodeMetrics
from farm_node.processor import JobProcessor
from farm_node.reconcile_loop import reconcile_forever
from farm_node.workdir import WorkDir

log = logging.getLogger(__name__)

DRAIN_DELAY_S = 2
MAX_BLOCK_S = 10  # bullmq's longest idle wait (default_maximum_block_timeout in its worker.py)
STOP_STEP_TIMEOUT_S = 5.0  # each Redis write on the way out; a silent Redis must not hold a stop
PROMOTE_INTERVAL_S = 1.0
LISTENER_SETTLED_S = 30.0  # a listener that ran this long before it stopped starts its backoff afresh


@dataclass(frozen=True)
class _Services:
    """What a running node holds open; ``FarmNode._tear_down`` closes it all."""

    ffmpeg: str  # its path
    redis: aioredis.Redis
    writer: NodeRegistryWriter  # the node's entry in the registry, its name claimed
    workdir: WorkDir  # claimed
    db: Database
    storage: Storage
    queue: QueueClient
    worker_redis: aioredis.Redis  # BullMQ's connection, with timeouts of its own


class FarmNode:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        concurrency: int = 1,
        work_dir: Path | None = None,
        tags: list[str] | None = None,
        metrics_host: str = "0.0.0.0",
        metrics_port: int | None = defaults.METRICS_PORT,
        lock_seconds: float = defaults.LOCK_SECONDS,
        stalled_interval_seconds: float = defaults.STALLED_INTERVAL_SECONDS,
        max_stalled: int = defaults.MAX_STALLED_COUNT,
        reconcile_interval_seconds: float = defaults.RECONCILE_INTERVAL_S,
        progress_timeout: float = defaults.PROGRESS_TIMEOUT_S,
        threads: int | None = None,
    ):
        if concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if lock_seconds < 1:
            raise ValueError("--lock-seconds must be at least 1")
        if stalled_interval_seconds <= 0 or reconcile_interval_seconds <= 0:
            raise ValueError("--stalled-interval-seconds and --reconcile-interval-seconds must be positive")
        if max_stalled < 0:
            raise ValueError("--max-stalled must be 0 or more")
        if not (math.isfinite(progress_timeout) and progress_timeout > 0):
            raise ValueError(f"--progress-timeout must be a positive number of seconds, got {progress_timeout:g}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        self.settings = settings
        # Checked here, not first by the registry writer deep in run(): a bad --name is a usage error
        # (exit 2, one line) and must not leave a work dir or a database behind.
        self.name = check_node_name(name) if name is not None else host_node_name()
        self.concurrency = concurrency
        self.work_dir = (work_dir or settings.work_root / self.name).resolve()
        self.tags = tags or []
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.lock_seconds = lock_seconds
        self.stalled_interval_seconds = stalled_interval_seconds
        self.max_stalled = max_stalled
        self.reconcile_interval_seconds = reconcile_interval_seconds
        self.progress_timeout = progress_timeout
        self.threads = threads
        self.state = "run"  # desired: run, pause, drain
        self.stop_requests = 0
        self._stopping = asyncio.Event()
        self.worker: Worker | None = None
        self.processor: JobProcessor | None = None
        self.disk: DiskGuard | None = None
        self.metrics_url: str | None = None
        self.reconciler: Reconciler | None = None
        self._heartbeat_stop = asyncio.Event()  # set after the worker closed: a draining node stays listed
        self._settling: set[asyncio.Task[None]] = set()
        self._run_task: asyncio.Task[Any] | None = None
        self._storage_sweep: asyncio.Future[int] | None = None  # held, or the loop may drop the task

    def worker_options(self) -> dict[str, Any]:
        """BullMQ Worker options: our timing, and the lock renewed at half its duration."""
        lock_ms = int(self.lock_seconds * 1000)
        return {
            "concurrency": self.concurrency,
            "name": self.name,
            "lockDuration": lock_ms,
            "lockRenewTime": lock_ms // 2,
            "stalledInterval": int(self.stalled_interval_seconds * 1000),
            "maxStalledCount": self.max_stalled,
            # The idle wait (BZPOPMIN) must end well within the read timeout of the worker's
            # connection (see _open_services), or every wait ends in a TimeoutError and BullMQ backs off.
            "drainDelay": DRAIN_DELAY_S,
        }

    # -- status, read by the heartbeat and /health ------------------------------------------------
    def status(self) -> str:
        if self.state == "drain" or self.stop_requests:
            return "draining"
        if self.state == "pause":
            return "paused"
        if self.disk is not None and self.disk.full:
            return "disk full"
        return "busy" if self.processor and self.processor.running else "idle"

    def running_jobs(self) -> list[dict[str, Any]]:
        if not self.processor:
            return []
        return [
            {"jobId": r.job_id, "name": r.name, "progress": round(r.progress, 1), "attempt": r.attempt}
            for r in self.processor.running.values()
        ]

    async def _pause_for_room(self) -> None:
        if self.worker is not None:
            await self.worker.pause(do_not_wait_active=True)

    def _resume_after_disk_full(self) -> None:
        if self.worker is not None and self.state == "run" and not self.stop_requests:
            self.worker.resume()

    # -- stopping -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: drain (take nothing new, finish running jobs). Second: hand jobs back.

        Before the node is up (waiting on a service, say) there is nothing to drain: the start
        is cancelled at once."""
        self.stop_requests += 1
        if self.worker is None and self._run_task is not None and not self._run_task.done():
            log.info("stopping: the node was still starting")
            self._run_task.cancel()
            return
        if self.stop_requests == 1:
            log.info(
                "draining: finishing %d running job(s), taking no new ones (signal again to stop now)",
                len(self.processor.running) if self.processor else 0,
            )
        else:
            log.warning("stopping now: handing running jobs back to the queue")
            if self.processor:
                self.processor.hand_back_all()
        self._stopping.set()

    async def apply_desired_state(self, state: str) -> None:
        if state == self.state:
            return
        log.info("remote control: %s -> %s", self.state, state)
        self.state = state
        if self.worker is None:
            return
        if state == "run":
            if self.disk is None or not self.disk.paused:  # else it resumes once there is room
                self.worker.resume()
        else:
            await self.worker.pause(do_not_wait_active=True)
            if state == "drain":
                self.request_stop()

    # -- the run ------------------------------------------------------------------------------------
    async def run(self) -> int:
        """Start the node, work until asked to stop, then tear it down; returns the exit status."""
        self._run_task = asyncio.current_task()  # a stop request before the node is up cancels it
        services = await self._open_services()
        self._sweep(services)
        metrics = self._build_metrics(services)
        self.disk = DiskGuard(
            self.work_dir, self.name, pause=self._pause_for_room, resume=self._resume_after_disk_full, metrics=metrics
        )
        self.processor = self._build_processor(services, metrics, self.disk)
        await self._restore_desired_state(services)
        await self._serve_metrics(metrics)
        self.reconciler = Reconciler(services.db, services.queue, services.storage)
        self.worker = self._build_worker(services, self.processor)
        helpers = self._start_helpers(services, metrics, self.disk, self.reconciler)
        worker_task = asyncio.create_task(self.worker.run(), name="worker")
        log.info(
            "node %s up: queue %r, concurrency %d, work dir %s, FFmpeg %s at %s",
            self.name,
            self.settings.queue,
            self.concurrency,
            self.work_dir,
            ffmpeg_version(services.ffmpeg),
            services.ffmpeg,
        )
        try:
            await self._work_until_stopped(self.worker, worker_task)
        finally:
            await self._tear_down(services, metrics, helpers)
        log.info("node %s stopped", self.name)
        return 0

    async def _open_services(self) -> _Services:
        """FFmpeg, Redis, the node's name and work dir, the database and the storage, each checked."""
        settings = self.settings
        ffmpeg = find_ffmpeg(settings.ffmpeg)  # missing or too old: a configuration error, before anything starts
        redis_url = await asyncio.to_thread(resolve_redis_url, settings)
        # Within seconds, and before anything waits on Redis: a silent server would hang the start.
        await startup.require_redis(redis_url, configured=bool(settings.redis_url))
        redis = redis_client(redis_url, patient=True)
        writer = NodeRegistryWriter(redis, settings.queue, self.name)
        # The name first, then the work dir, and only then the sweep: a live node of this name (or
        # on this work dir) refuses this start before anything of its is touched.
        await writer.claim()
        workdir = WorkDir.claim(self.work_dir, self.name)
        db = await startup.require_database(
            settings.effective_database_url, source="database_url" if settings.database_url else "data_dir"
        )
        storage = await startup.require_storage(
            settings.effective_storage_url,
            RetryPolicy.from_settings(settings),
            source="storage_url" if settings.storage_url else "data_dir",
        )
        # BullMQ's own connections (from a URL) had no read timeout, and retried a command 20 times
        # with up to 20 s between tries: against a silent Redis a node hung for ten minutes. Ours
        # time out, and give up on a command within the lock's duration, past which its job is
        # another node's anyway. Its idle wait (BZPOPMIN) blocks for up to MAX_BLOCK_S.
        worker_redis = redis_client(
            redis_url, patient=True, read_timeout=MAX_BLOCK_S + REDIS_READ_TIMEOUT_S, give_up_after=self.lock_seconds
        )
        return _Services(
            ffmpeg=ffmpeg,
            redis=redis,
            writer=writer,
            workdir=workdir,
            db=db,
            storage=storage,
            queue=QueueClient(redis_url, settings.queue, patient=True),
            worker_redis=worker_redis,
        )

    def _sweep(self, services: _Services) -> None:
        """What a crash left: FFmpegs and files in the work dir now, leftovers in the storage meanwhile."""
        services.workdir.stop_orphans()
        services.workdir.sweep()
        # Temp files and upload parts: a walk of the whole storage (a NAS, a bucket), so it runs
        # beside the node's start instead of delaying it.
        self._storage_sweep = asyncio.ensure_future(asyncio.to_thread(services.storage.sweep_leftovers))
        self._storage_sweep.add_done_callback(_log_failure("sweeping storage leftovers"))

    def _build_metrics(self, services: _Services) -> NodeMetrics:
        ffmpeg = services.ffmpeg
        metrics = NodeMetrics(
            self.name,
            version=__version__,
            ffmpeg_version=ffmpeg_version(ffmpeg),
            ffmpeg_path=ffmpeg,
            concurrency=self.concurrency,
            disk_path=self.work_dir,
            on_scrape=lambda: self._read_queue_depth(services.queue, metrics),
            health=lambda: {"status": "starting"},
        )  # until the heartbeat runs
        return metrics

    def _build_processor(self, services: _Services, metrics: NodeMetrics, disk: DiskGuard) -> JobProcessor:
        queue = services.queue
        return JobProcessor(
            node_name=self.name,
            db=services.db,
            storage=services.storage,
            ffmpeg=services.ffmpeg,
            work_dir=self.work_dir,
            metrics=metrics,
            is_cancel_requested=queue.is_cancel_requested,
            lock_holder=queue.lock_holder,
            db_retry_seconds=self.lock_seconds,
            progress_timeout=self.progress_timeout,
            threads=self.threads,
            disk=disk,
            room_elsewhere=lambda job_id: someone_else_may_have_room(
                services.redis, self.settings.queue, self.name, job_id
            ),
        )

    async def _restore_desired_state(self, services: _Services) -> None:
        """Paused stays paused across a restart; a drain that ended with our last exit does not."""
        self.state = await services.writer.desired_state()
        if self.state == "drain":
            self.state = "run"
            await services.redis.delete(services.writer.keys.control(self.name))

    async def _serve_metrics(self, metrics: NodeMetrics) -> None:
        if self.metrics_port is None:
            return
        try:
            port = await metrics.serve(self.metrics_host, self.metrics_port)
        except OSError as exc:
            # Alone, "[Errno 98] Address already in use" says neither which address nor what to do.
            raise SettingsError(
                f"cannot serve /metrics on {self.metrics_host}:{self.metrics_port}: "
                f"{exc.strerror or exc}; choose another --metrics-port, or --no-metrics"
            ) from None
        shown_host = socket.gethostname() if self.metrics_host in ("0.0.0.0", "::") else self.metrics_host
        self.metrics_url = f"http://{shown_host}:{port}/metrics"
        log.info("metrics on %s", self.metrics_url)

    def _build_worker(self, services: _Services, processor: JobProcessor) -> Worker:
        worker = Worker(
            self.settings.queue,
            processor,
            {"connection": services.worker_redis, "autorun": False, **self.worker_options()},
        )
        worker.on("error", self._on_queue_error)
        worker.on("failed", self._on_failed)
        worker.on("lockRenewalFailed", self._on_lock_renewal_failed)
        if self.state == "pause":
            worker.paused = True
            worker.resume_event.clear()
        return worker

    def _start_helpers(
        self, services: _Services, metrics: NodeMetrics, disk: DiskGuard, reconciler: Reconciler
    ) -> list[asyncio.Task[None]]:
        """The tasks beside the worker, the heartbeat first (``_tear_down`` stops it last)."""
        ffmpeg = services.ffmpeg
        info = NodeInfo(
            concurrency=self.concurrency,
            version=__version__,
            ffmpeg_version=ffmpeg_version(ffmpeg),
            ffmpeg_path=ffmpeg,
            encoders=ffmpeg_encoders(ffmpeg),
            tags=self.tags,
            metrics_url=self.metrics_url,
        )
        heartbeat = Heartbeat(
            services.writer,
            lambda: NodeActivity(self.status(), self.running_jobs(), disk.reason),
            info,
            on_desired_state=self.apply_desired_state,
            on_sample=lambda sample: self._record_sample(metrics, heartbeat, sample),
        )
        metrics.health = heartbeat.health
        return [
            asyncio.create_task(heartbeat.run(self._heartbeat_stop), name="heartbeat"),
            asyncio.create_task(
                self._supervise("cancel", lambda: self._cancel_listener(services.redis)), name="cancel"
            ),
            asyncio.create_task(self._promote_retries(services.queue), name="promote-retries"),
            asyncio.create_task(disk.watch(self._stopping), name="disk-guard"),
            asyncio.create_task(
                reconcile_forever(
                    reconciler,
                    services.redis,
                    self.settings.queue,
                    self.name,
                    self._stopping,
                    self.reconcile_interval_seconds,
                ),
                name="reconcile",
            ),
        ]

    async def _work_until_stopped(self, worker: Worker, worker_task: asyncio.Task[None]) -> None:
        """Until a stop request (or the worker ends on its own); then close the worker, which lets
        running jobs finish, or hand them back after a second request."""
        stop_wait = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({worker_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        await worker.close()
        await worker_task

    async def _tear_down(self, services: _Services, metrics: NodeMetrics, helpers: list[asyncio.Task[None]]) -> None:
        self._stopping.set()
        self._heartbeat_stop.set()  # the heartbeat removes the node from the registry as it ends
        heartbeat, *others = helpers
        await asyncio.gather(heartbeat, return_exceptions=True)
        for task in others:
            task.cancel()
        await asyncio.gather(*helpers, *self._settling, return_exceptions=True)
        if self.state == "drain":  # the drain is done; a restarted node runs normally
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    services.redis.delete(services.writer.keys.control(self.name)), STOP_STEP_TIMEOUT_S
                )
        await metrics.close()
        await services.queue.close()
        await services.worker_redis.aclose()
        services.workdir.sweep()
        services.workdir.release()
        with contextlib.suppress(Exception):  # else the claim expires with its TTL
            await asyncio.wait_for(services.writer.release(), STOP_STEP_TIMEOUT_S)
        await services.redis.aclose()
        await asyncio.to_thread(services.db.dispose)

    # -- jobs ---------------------------------------------------------------------------------------
    def _on_failed(self, job: Job, err: BaseException, *args: object) -> None:
        """BullMQ failed a job that stalled too often without calling our processor: settle its row."""
        if not getattr(job, "deferredFailure", None) or self.reconciler is None:
            return
        self._background(self._settle_failed(self.reconciler, job.id))

    def _on_lock_renewal_failed(self, job_ids: Iterable[object], *args: object) -> None:
        """BullMQ could not renew these jobs' locks: a run whose lock another run holds now stops
        at once (its FFmpeg too) rather than transcode on for a result that cannot stand."""
        if self.processor is not None:
            for job_id in job_ids:
                self._background(self.processor.check_lock(str(job_id)))

    @staticmethod
    def _on_queue_error(err: BaseException, *args: object) -> None:
        # A failed renewal is BullMQ's "error" too, once per renewal; the run that lost its lock
        # says so in one line of its own (see _on_lock_renewal_failed).
        if not str(err).startswith("could not renew lock for job"):
            log.warning("queue error: %s", err)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` beside the worker; awaited before the node stops."""
        task = asyncio.ensure_future(coro)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    @staticmethod
    async def _settle_failed(reconciler: Reconciler, job_id: str) -> None:
        try:
            await reconciler.settle_failed(job_id)
        except Exception as exc:  # the periodic pass will get it
            log.warning("could not record the failure of job %s: %s", shown(job_id), exc)

    async def _cancel_listener(self, redis: aioredis.Redis) -> None:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(Keyspace(self.settings.queue).cancel_channel)
            async for message in pubsub.listen():
                if message.get("type") == "message" and self.processor:
                    if self.processor.cancel(str(message["data"])):  # anyone may publish: only ids we run match
                        log.info("cancel requested for job %s", shown(message["data"]))
        finally:
            await pubsub.aclose()

    async def _supervise(self, what: str, start: Callable[[], Awaitable[None]]) -> None:
        """Keep a listener running through Redis outages, backing off exponentially."""
        backoff = Backoff(first=0.5, cap=30)
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - began > LISTENER_SETTLED_S:  # it ran a while: a new outage
                    backoff.reset()
                pause = backoff.next()
                log.warning("%s listener stopped (%s); restarting in %.1f s", what, exc, pause)
                await asyncio.sleep(pause)

    # -- metrics ------------------------------------------------------------------------------------
    @staticmethod
    async def _read_queue_depth(queue: QueueClient, metrics: NodeMetrics) -> None:
        """Called by /metrics before each scrape: no timer, so an unscraped idle node stays asleep."""
        metrics.set_queue_depth(await queue.counts())

    @staticmethod
    def _record_sample(metrics: NodeMetrics, heartbeat: Heartbeat, sample: Mapping[str, float]) -> None:
        metrics.set_system(sample["cpu"], sample["mem"])
        metrics.set_redis_outage(heartbeat.outage_seconds)

    async def _promote_retries(self, queue: QueueClient) -> None:
        """Put jobs whose retry backoff has passed back in the queue (see QueueClient.promote_due)."""
        while not self._stopping.is_set():
            try:
                if await queue.promote_due():
                    log.debug("promoted retries whose backoff had passed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("could not promote due retries: %s", exc)
            await asyncio.sleep(PROMOTE_INTERVAL_S)


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for a background task: its exception in the log, not lost."""

    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", what, task.exception())

    return done
