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
from pathlib import Path

from bullmq import Worker

from farm import __version__
from farm.services.embedded import resolve_redis_url
from farm.domain.media import ffmpeg_encoders, ffmpeg_version, find_ffmpeg
from farm.services.queue import REDIS_READ_TIMEOUT_S, QueueClient, cancel_channel, redis_client
from farm.services.reconciler import Reconciler
from farm.base.settings import Settings, SettingsError
from farm.services.storage import RetryPolicy
from farm.services.registry import NodeRegistryWriter, check_node_name, host_node_name
from farm.base.untrusted import shown
from farm_node import startup
from farm_node.disk_guard import DiskGuard, someone_else_may_have_room
from farm_node.heartbeat import Heartbeat, NodeActivity, NodeInfo
from farm_node.ffmpeg_runner import PROGRESS_TIMEOUT_S
from farm_node.metrics import NodeMetrics
from farm_node.processor import JobProcessor
from farm_node.reconcile_loop import RECONCILE_INTERVAL_S, reconcile_forever
from farm_node.workdir import WorkDir

log = logging.getLogger(__name__)

# BullMQ's timing; `farm-node --lock-seconds ...` changes them (tests use a few seconds).
LOCK_SECONDS = 60.0  # renewed every half of it; a loop blocked this long loses the job
STALLED_INTERVAL_SECONDS = 30.0  # how often a node looks for jobs whose lock expired
# A job whose node died more than this many times fails for good ("stopped responding N times").
MAX_STALLED_COUNT = 3
DRAIN_DELAY_S = 2
MAX_BLOCK_S = 10  # bullmq's longest idle wait (default_maximum_block_timeout in its worker.py)
STOP_STEP_TIMEOUT_S = 5.0  # each Redis write on the way out; a silent Redis must not hold a stop
PROMOTE_INTERVAL_S = 1.0


class FarmNode:
    def __init__(self, settings: Settings, *, name: str | None = None, concurrency: int = 1,
                 work_dir: Path | None = None, tags: list[str] | None = None,
                 metrics_host: str = "0.0.0.0", metrics_port: int | None = 9464,
                 lock_seconds: float = LOCK_SECONDS, stalled_interval_seconds: float = STALLED_INTERVAL_SECONDS,
                 max_stalled: int = MAX_STALLED_COUNT, reconcile_interval_seconds: float = RECONCILE_INTERVAL_S,
                 progress_timeout: float = PROGRESS_TIMEOUT_S):
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
        self.state = "run"  # desired: run, pause, drain
        self.stop_requests = 0
        self._stopping = asyncio.Event()
        self.worker: Worker | None = None
        self.processor: JobProcessor | None = None
        self.disk: DiskGuard | None = None
        self.metrics_url: str | None = None
        self.reconciler: Reconciler | None = None
        self.workdir: WorkDir | None = None  # claimed in run()
        self._settling: set[asyncio.Task] = set()
        self._run_task: asyncio.Task | None = None

    def worker_options(self) -> dict:
        """BullMQ Worker options: our timing, and the lock renewed at half its duration."""
        lock_ms = int(self.lock_seconds * 1000)
        return {
            "concurrency": self.concurrency, "name": self.name,
            "lockDuration": lock_ms, "lockRenewTime": lock_ms // 2,
            "stalledInterval": int(self.stalled_interval_seconds * 1000),
            "maxStalledCount": self.max_stalled,
            # The idle wait (BZPOPMIN) must end well within the read timeout of the worker's
            # connection (see run()), or every wait ends in a TimeoutError and BullMQ backs off.
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

    def running_jobs(self) -> list[dict]:
        if not self.processor:
            return []
        return [{"jobId": r.job_id, "name": r.name, "progress": round(r.progress, 1), "attempt": r.attempt}
                for r in self.processor.running.values()]

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
            log.info("draining: finishing %d running job(s), taking no new ones (signal again to stop now)",
                     len(self.processor.running) if self.processor else 0)
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
        settings = self.settings
        self._run_task = asyncio.current_task()  # a stop request before the node is up cancels it
        ffmpeg = find_ffmpeg(settings.ffmpeg)  # missing or too old: a configuration error, before anything starts
        redis_url = await asyncio.to_thread(resolve_redis_url, settings)
        # Within seconds, and before anything waits on Redis: a silent server would hang the start.
        await startup.require_redis(redis_url, configured=bool(settings.redis_url))
        redis = redis_client(redis_url, patient=True)
        writer = NodeRegistryWriter(redis, settings.queue, self.name)
        # The name first, then the work dir, and only then the sweep: a live node of this name (or
        # on this work dir) refuses this start before anything of its is touched.
        await writer.claim()
        self.workdir = WorkDir.claim(self.work_dir, self.name)
        db = await startup.require_database(settings.effective_database_url,
                                            source="database_url" if settings.database_url else "data_dir")
        storage = await startup.require_storage(settings.effective_storage_url, RetryPolicy.from_settings(settings),
                                                source="storage_url" if settings.storage_url else "data_dir")
        self.workdir.stop_orphans()
        self.workdir.sweep()
        # Temp files and upload parts that a crash left: a walk of the whole storage (a NAS, a
        # bucket), so it runs beside the node's start instead of delaying it.
        self._sweep = asyncio.ensure_future(asyncio.to_thread(storage.sweep_leftovers))
        self._sweep.add_done_callback(_log_failure("sweeping storage leftovers"))

        queue = QueueClient(redis_url, settings.queue, patient=True)
        metrics = NodeMetrics(self.name, version=__version__, ffmpeg_version=ffmpeg_version(ffmpeg), ffmpeg_path=ffmpeg,
                              concurrency=self.concurrency, disk_path=self.work_dir,
                              on_scrape=lambda: self._read_queue_depth(queue, metrics))
        self.disk = DiskGuard(self.work_dir, self.name, pause=lambda: self.worker.pause(do_not_wait_active=True),
                              resume=self._resume_after_disk_full, metrics=metrics)
        self.processor = JobProcessor(node_name=self.name, db=db, storage=storage, ffmpeg=ffmpeg,
                                      work_dir=self.work_dir, metrics=metrics,
                                      is_cancel_requested=queue.is_cancel_requested,
                                      lock_holder=queue.lock_holder,
                                      db_retry_seconds=self.lock_seconds, progress_timeout=self.progress_timeout,
                                      disk=self.disk, room_elsewhere=lambda job_id: someone_else_may_have_room(
                                          redis, settings.queue, self.name, job_id))
        self.state = await writer.desired_state()
        if self.state == "drain":  # a drain that ended with our last exit: start afresh
            self.state = "run"
            await redis.delete(writer.keys.control(self.name))
        heartbeat_stop = asyncio.Event()  # set after the worker closed: a draining node stays listed
        heartbeat: Heartbeat | None = None
        metrics.health = lambda: heartbeat.health() if heartbeat else {"status": "starting"}
        if self.metrics_port is not None:
            try:
                port = await metrics.serve(self.metrics_host, self.metrics_port)
            except OSError as exc:
                # Alone, "[Errno 98] Address already in use" says neither which address nor what to do.
                raise SettingsError(f"cannot serve /metrics on {self.metrics_host}:{self.metrics_port}: "
                                   f"{exc.strerror or exc}; choose another --metrics-port, or --no-metrics") from None
            shown_host = socket.gethostname() if self.metrics_host in ("0.0.0.0", "::") else self.metrics_host
            self.metrics_url = f"http://{shown_host}:{port}/metrics"
            log.info("metrics on %s", self.metrics_url)

        self.reconciler = Reconciler(db, queue, storage)
        # BullMQ's own connections (from a URL) had no read timeout, and retried a command 20 times
        # with up to 20 s between tries: against a silent Redis a node hung for ten minutes. Ours
        # time out, and give up on a command within the lock's duration, past which its job is
        # another node's anyway. Its idle wait (BZPOPMIN) blocks for up to MAX_BLOCK_S.
        worker_redis = redis_client(redis_url, patient=True, read_timeout=MAX_BLOCK_S + REDIS_READ_TIMEOUT_S,
                                    give_up_after=self.lock_seconds)
        self.worker = Worker(settings.queue, self._process,
                             {"connection": worker_redis, "autorun": False, **self.worker_options()})
        self.worker.on("error", self._on_queue_error)
        self.worker.on("failed", self._on_failed)
        self.worker.on("lockRenewalFailed", self._on_lock_renewal_failed)
        if self.state == "pause":
            self.worker.paused = True
            self.worker.resume_event.clear()
        info = NodeInfo(concurrency=self.concurrency, version=__version__, ffmpeg_version=ffmpeg_version(ffmpeg),
                        ffmpeg_path=ffmpeg, encoders=ffmpeg_encoders(ffmpeg), tags=self.tags, metrics_url=self.metrics_url)
        heartbeat = Heartbeat(writer, lambda: NodeActivity(self.status(), self.running_jobs(), self.disk.reason), info,
                              on_desired_state=self.apply_desired_state,
                              on_sample=lambda sample: self._record_sample(metrics, heartbeat, sample))
        helpers = [
            asyncio.create_task(heartbeat.run(heartbeat_stop), name="heartbeat"),
            asyncio.create_task(self._supervise("cancel", lambda: self._cancel_listener(redis)), name="cancel"),
            asyncio.create_task(self._promote_retries(queue), name="promote-retries"),
            asyncio.create_task(self.disk.watch(self._stopping), name="disk-guard"),
            asyncio.create_task(reconcile_forever(self.reconciler, redis, settings.queue, self.name, self._stopping,
                                                  self.reconcile_interval_seconds), name="reconcile"),
        ]
        worker_task = asyncio.create_task(self.worker.run(), name="worker")
        log.info("node %s up: queue %r, concurrency %d, work dir %s, FFmpeg %s at %s", self.name, settings.queue,
                 self.concurrency, self.work_dir, ffmpeg_version(ffmpeg), ffmpeg)
        try:
            stop_wait = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({worker_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            await self.worker.close()
            await worker_task
        finally:
            self._stopping.set()
            heartbeat_stop.set()  # the heartbeat removes the node from the registry as it ends
            await asyncio.gather(helpers[0], return_exceptions=True)
            for task in helpers[1:]:
                task.cancel()
            await asyncio.gather(*helpers, *self._settling, return_exceptions=True)
            if self.state == "drain":  # the drain is done; a restarted node runs normally
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(redis.delete(writer.keys.control(self.name)), STOP_STEP_TIMEOUT_S)
            await metrics.close()
            await queue.close()
            await worker_redis.aclose()
            self.workdir.sweep()
            self.workdir.release()
            with contextlib.suppress(Exception):  # else the claim expires with its TTL
                await asyncio.wait_for(writer.release(), STOP_STEP_TIMEOUT_S)
            await redis.aclose()
            await asyncio.to_thread(db.dispose)
        log.info("node %s stopped", self.name)
        return 0

    # -- jobs ---------------------------------------------------------------------------------------
    async def _process(self, job, token: str) -> dict:
        return await self.processor(job, token)  # it numbers the run (stalls included) and logs it

    def _on_failed(self, job, err, *args) -> None:
        """BullMQ failed a job that stalled too often without calling our processor: settle its row."""
        if not getattr(job, "deferredFailure", None) or self.reconciler is None:
            return
        self._background(self._settle_failed(job.id))

    def _on_lock_renewal_failed(self, job_ids, *args) -> None:
        """BullMQ could not renew these jobs' locks: a run whose lock another run holds now stops
        at once (its FFmpeg too) rather than transcode on for a result that cannot stand."""
        if self.processor is not None:
            for job_id in job_ids:
                self._background(self.processor.check_lock(str(job_id)))

    @staticmethod
    def _on_queue_error(err, *args) -> None:
        # A failed renewal is BullMQ's "error" too, once per renewal; the run that lost its lock
        # says so in one line of its own (see _on_lock_renewal_failed).
        if not str(err).startswith("could not renew lock for job"):
            log.warning("queue error: %s", err)

    def _background(self, coro) -> None:
        """Run ``coro`` beside the worker; awaited before the node stops."""
        task = asyncio.ensure_future(coro)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_failed(self, job_id: str) -> None:
        try:
            await self.reconciler.settle_failed(job_id)
        except Exception as exc:  # the periodic pass will get it
            log.warning("could not record the failure of job %s: %s", shown(job_id), exc)

    async def _cancel_listener(self, redis) -> None:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(cancel_channel(self.settings.queue))
            async for message in pubsub.listen():
                if message.get("type") == "message" and self.processor:
                    if self.processor.cancel(str(message["data"])):  # anyone may publish: only ids we run match
                        log.info("cancel requested for job %s", shown(message["data"]))
        finally:
            await pubsub.aclose()

    async def _supervise(self, what: str, start) -> None:
        """Keep a listener running through Redis outages, backing off exponentially."""
        backoff = 0.5
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - began > 30:
                    backoff = 0.5
                log.warning("%s listener stopped (%s); restarting in %.1f s", what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)

    # -- metrics ------------------------------------------------------------------------------------
    @staticmethod
    async def _read_queue_depth(queue: QueueClient, metrics: NodeMetrics) -> None:
        """Called by /metrics before each scrape: no timer, so an unscraped idle node stays asleep."""
        metrics.set_queue_depth(await queue.counts())

    @staticmethod
    def _record_sample(metrics: NodeMetrics, heartbeat: Heartbeat, sample: dict) -> None:
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


def _log_failure(what: str):
    """A done-callback for a background task: its exception in the log, not lost."""

    def done(task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", what, task.exception())

    return done
