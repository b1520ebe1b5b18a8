"""What a node does with one job, top to bottom.

mark active -> download the input -> probe -> FFmpeg (progress to the queue and the database) ->
verify the output -> upload it under a key of its own attempt -> finish the Job row with a
conditional update. A run that may be repeated (a node died, a lock was lost) is harmless: a run
that finds its lock taken by another run stops at once and leaves the job to it; a run that finds
the row completed by another deletes its own output and returns the row's result, so the row and
BullMQ's return value always name the same output and node, and the job is counted once.

Errors a retry cannot fix (a file that is not a video, FFmpeg refusing the input, a bad payload)
raise ``UnrecoverableError`` so BullMQ fails the job at once; anything else (storage, database,
FFmpeg killed by a signal) is retried with backoff. The job's work dir is removed on every path.

The database may go away while a job runs (farm_node/job_database.py: the writes that matter
wait it out for at most the job's lock duration); a run whose database is still gone then hands
the job back to the queue instead of completing it, so the queue never says "completed" while the
row says otherwise. Its upload, if any, stays: the next run has the same number, so it writes the same
key, and if our finish did land before the link broke, the next run finds the row completed with
that very output (a deleted upload would leave a completed row without its file).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bullmq import Job, UnrecoverableError
from bullmq.custom_errors import DelayedError

from farm.base.errors import describe
from farm.base.untrusted import shown
from farm.domain import defaults
from farm.domain.jobspec import OutputConfig, outputs_record
from farm.domain.media import MediaInfo, NotAVideoError, probe
from farm.domain.object_keys import output_filename, output_key, sanitize_name
from farm.domain.payload import JobPayload, PayloadError
from farm.domain.status import JobStatus
from farm.services.db import Database, error_line, repo
from farm.services.db.models import Job as JobRow
from farm.services.storage import ObjectNotFound, Storage, StorageError, TransferCancelled
from farm_node.disk_guard import DiskGuard
from farm_node.ffmpeg_args import build_args
from farm_node.ffmpeg_runner import FFmpegError, FFmpegResult, FFmpegStalled, run_ffmpeg
from farm_node.job_database import JobDatabase
from farm_node.job_errors import (
    AlreadyCompleted,
    DatabaseRefused,
    DatabaseUnreachable,
    FFmpegFailed,
    JobCancelled,
    LockLost,
    StorageFull,
    WorkDirFull,
)
from farm_node.metrics import NodeMetrics
from farm_node.workdir import job_dir_name

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5  # at most two progress writes a second per job: queue and database
PROGRESS_SEND_TIMEOUT_S, PROGRESS_QUIET_S = 2.0, 10.0  # a report Redis did not take: skip it, pause
HAND_BACK_DELAY_S = 5.0  # a job handed back during an outage waits this long before its next run
HAND_BACK_TIMEOUT_S = 10.0  # each Redis call of a cold stop's hand back
ROOM_HAND_BACK_DELAY_S = 2.0  # a job handed back for room waits this long: another node takes it first
DURATION_TOLERANCE_S = 0.5
LOCK_CHECK_TIMEOUT_S = 3.0  # a Redis that does not answer this fast leaves the lock unknown: carry on


NO_SPACE = "No space left on device"


@dataclass
class RunningJob:
    job_id: str
    name: str
    attempt: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # The same request for storage transfers, which run in threads.
    transfer_cancel: threading.Event = field(default_factory=threading.Event)
    hand_back: bool = False  # cold stop: give the job back to the queue instead of failing it
    token: str = ""  # BullMQ's lock token of this run
    lost_lock: bool = False  # another run holds the lock now: stop, touch neither row nor queue
    output_key: str | None = None  # set once the upload starts, so a run that stops can delete it
    progress: float = 0.0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Numbering:
    """Which run of its job this is, counting the runs whose node died.

    BullMQ's attemptsMade counts only runs that ended (completed, failed, retried); a run whose
    node died bumps stalledCounter instead. Runs are numbered counting both (the row's attempts,
    the output key attempt-<n>), so a run after a death never reuses the dead run's key, which a
    late duplicate of it (a lost lock) would delete along with its own. The budget grows by the
    same stalls, so "was that the last attempt?" stays BullMQ's answer.
    """

    attempt: int
    max_attempts: int
    stalled: int

    @classmethod
    def of(cls, job: Job) -> _Numbering:
        stalled = int(getattr(job, "stalledCounter", 0) or 0)
        return cls(
            attempt=int(job.attemptsMade or 0) + stalled + 1,
            max_attempts=int((job.opts or {}).get("attempts") or 1) + stalled,
            stalled=stalled,
        )


class JobProcessor:
    """Runs jobs for one node. ``running`` is read by the heartbeat and the control listeners."""

    def __init__(
        self,
        *,
        node_name: str,
        db: Database,
        storage: Storage,
        ffmpeg: str,
        work_dir: Path,
        metrics: NodeMetrics | None = None,
        is_cancel_requested: Callable[[str], Awaitable[bool]] | None = None,
        lock_holder: Callable[[str], Awaitable[str | None]] | None = None,
        db_retry_seconds: float = 60.0,
        progress_timeout: float | None = defaults.PROGRESS_TIMEOUT_S,
        threads: int | None = None,
        disk: DiskGuard | None = None,
        room_elsewhere: Callable[[str], Awaitable[bool]] | None = None,
    ):
        self.node_name = node_name
        self.database = JobDatabase(db, node_name=node_name, retry_seconds=db_retry_seconds)
        self.storage = storage
        self.ffmpeg = ffmpeg
        self.work_dir = work_dir
        self.metrics = metrics
        self.is_cancel_requested = is_cancel_requested
        # ``await lock_holder(job_id)``: the token that holds the job's BullMQ lock now ("": nobody;
        # None: the queue has no such job), see QueueClient.lock_holder.
        self.lock_holder = lock_holder
        self.running: dict[str, RunningJob] = {}
        self.progress_timeout = progress_timeout  # FFmpeg silent this long is stopped (None: never)
        self.threads = threads  # FFmpeg threads per job (None: FFmpeg's own choice)
        self.disk = disk  # None takes every job, full disk or not
        # ``await room_elsewhere(job_id)``: whether another node may have room for a job this one has none for.
        self.room_elsewhere = room_elsewhere

    # -- entry point (BullMQ's processor signature) ---------------------------------------------
    async def __call__(self, job: Job, token: str) -> dict[str, Any]:
        """Run the job, then settle how the run ended: each way out has its handler below. Those
        that are not an outcome of the job (another run owns it, the job goes back to the queue)
        end in ``DelayedError``, which tells BullMQ to leave the job as it is."""
        numbering = _Numbering.of(job)
        try:  # before the id is logged or anything is fetched: the id itself may be hostile
            payload = JobPayload.parse(job.id, job.data)
        except PayloadError as exc:
            raise await self._refuse(job, exc, numbering.attempt)  # noqa: B904 (the payload's error is the cause)
        log.info(
            "job %s: run %d starting (stalled %d time(s) before)", payload.job_id, numbering.attempt, numbering.stalled
        )
        run = RunningJob(payload.job_id, payload.input_name, numbering.attempt, token=token)
        self.running[payload.job_id] = run
        job_dir = self.work_dir / job_dir_name(payload.job_id, numbering.attempt)
        try:
            result = await self._run_while_owned(job, payload, run, job_dir)
        except LockLost:
            await self._abandon(run)
            raise DelayedError() from None  # the job is the other run's
        except AlreadyCompleted as done:  # counted by the run that completed the row
            return _result(done.outputs, done.node)
        except DatabaseUnreachable as exc:  # the job runs again once the database answers
            await self._hand_back_for_outage(job, token, payload, str(exc))
            raise DelayedError() from None
        except JobCancelled:
            if run.hand_back:  # a cold stop: the job runs again, here or on another node
                await self._hand_back_for_stop(job, token, payload)
                raise DelayedError() from None
            await self._handle_cancel(run, payload)
            raise UnrecoverableError("cancelled by user") from None
        except PayloadError as exc:  # the payload contradicts the recorded rows (repo.check_payload)
            refusal = await self._refuse(job, exc, run.attempt)
            self._observe(run, payload, "failed")
            raise refusal  # noqa: B904 (the payload's error is the cause)
        except UnrecoverableError as exc:
            await self._handle_failure(run, payload, str(exc), _log_tail(exc))
            raise
        except Exception as exc:
            await self._handle_error(job, token, payload, run, exc, job_dir, numbering.max_attempts)
            raise
        else:
            self._observe(run, payload, "success")
            return result
        finally:
            self.running.pop(payload.job_id, None)
            shutil.rmtree(job_dir, ignore_errors=True)
            if self.metrics is not None:
                self.metrics.set_active(len(self.running))

    # -- how a run ends ------------------------------------------------------------------------
    async def _handle_error(
        self,
        job: Job,
        token: str,
        payload: JobPayload,
        run: RunningJob,
        exc: Exception,
        job_dir: Path,
        max_attempts: int,
    ) -> None:
        """An error that may not come back: a retry while attempts remain, else the job fails. A full
        work dir instead hands the job back while another node may have room. Returns when ``exc``
        is what BullMQ should record; raises what it should record in its place."""
        failure: Exception = exc
        if _disk_full(exc) and not isinstance(exc, (WorkDirFull, StorageFull)):
            failure = self._work_dir_full(job_dir)
        if isinstance(failure, WorkDirFull) and await self._hand_back_for_room(job, token, payload, failure):
            raise DelayedError() from None  # not an outcome: a node with room runs it
        if run.attempt >= max_attempts:
            await self._handle_failure(run, payload, _reason(failure), _log_tail(failure))
        else:
            await self._handle_retry(run, payload, _reason(failure), max_attempts)
        if isinstance(failure, sa.exc.SQLAlchemyError):  # BullMQ's failedReason would quote its SQL
            raise self._database_refused(payload, failure) from None

    async def _handle_cancel(self, run: RunningJob, payload: JobPayload) -> None:
        await self.database.record(
            payload.job_id, "the cancel", repo.mark_cancelled, payload.job_id, "cancelled by user"
        )
        self._observe(run, payload, "cancelled")

    async def _handle_failure(self, run: RunningJob, payload: JobPayload, reason: str, log_tail: str | None) -> None:
        """The job fails for good: the row says why; BullMQ fails it with the exception raised."""
        await self.database.record(
            run.job_id,
            "the failure",
            repo.finish_job,
            run.job_id,
            JobStatus.FAILED.value,
            attempt=run.attempt,
            error=reason,
            log_tail=log_tail,
        )
        self._observe(run, payload, "failed")

    async def _handle_retry(self, run: RunningJob, payload: JobPayload, reason: str, max_attempts: int) -> None:
        """The run failed with attempts left: the row notes it; BullMQ retries the job after its backoff."""
        await self.database.record(
            payload.job_id,
            "the retry",
            repo.note_retry,
            payload.job_id,
            f"attempt {run.attempt} of {max_attempts} failed, will retry: {reason}",
        )
        self._observe(run, payload, "failed")  # BullMQ counts a retried run as failed too

    async def _refuse(self, job: Job, exc: PayloadError, attempt: int) -> UnrecoverableError:
        """Record a job as failed for its payload; the error that fails it at once (a retry would
        send the same), raised before anything is downloaded: the failed list is where a user looks
        for it, and its producer may have recorded nothing."""
        reason = f"invalid job payload: {exc}"
        log.warning("job %s: %s", shown(job.id), reason)
        await self.database.record(
            shown(job.id), "the refusal", repo.record_refusal, job.id, job.data, reason, attempt=attempt
        )
        return UnrecoverableError(reason)

    def _observe(self, run: RunningJob, payload: JobPayload, status: str) -> None:
        """Count a run that ended in an outcome of its job, its duration including the row's update
        (not a run that left the job to another run or to the queue)."""
        if self.metrics is not None:
            self.metrics.observe_job(payload.config.format, status, time.monotonic() - run.started)

    @staticmethod
    def _database_refused(payload: JobPayload, exc: sa.exc.SQLAlchemyError) -> DatabaseRefused:
        log.warning(
            "job %s: the database refused a statement (%s: %s); the DEBUG log has it in full",
            payload.job_id,
            type(exc).__name__,
            error_line(exc),
        )
        log.debug("job %s: database error", payload.job_id, exc_info=exc)
        return DatabaseRefused(_reason(exc))

    # -- the steps -----------------------------------------------------------------------------
    async def _run_while_owned(self, job: Job, payload: JobPayload, run: RunningJob, job_dir: Path) -> dict[str, Any]:
        """``_run``; once the lock is lost, whatever ends the run (FFmpeg killed, a transfer
        cancelled, an error) is reported as ``LockLost``: none of it is this run's to record."""
        try:
            return await self._run(job, payload, run, job_dir)
        except Exception:
            if run.lost_lock:
                raise LockLost() from None
            raise

    async def _run(self, job: Job, payload: JobPayload, run: RunningJob, job_dir: Path) -> dict[str, Any]:
        if self.is_cancel_requested and await self.is_cancel_requested(payload.job_id):
            raise JobCancelled()
        await self.database.call(repo.check_payload, payload)
        await self._check_room(payload)
        job_dir.mkdir(parents=True, exist_ok=True)
        source = job_dir / ("input" + Path(sanitize_name(payload.input_name)).suffix.lower())
        info = await self._fetch_input(payload, run, source)
        target = job_dir / f"output.{payload.config.extension}"
        result = await self._transcode(job, payload, run, source, target, info)
        out_info = await self._verify(target, info, payload.config, payload.input_name)
        key, outputs = await self._upload(payload, run, target, out_info)
        await self._finish(payload, run, key, outputs, result.log_tail)
        await _report_progress(job, 100)
        return _result(outputs, self.node_name)

    async def _fetch_input(self, payload: JobPayload, run: RunningJob, source: Path) -> MediaInfo:
        """Download the input to ``source`` and probe it; the row says "active" from here on (a job
        another producer enqueued gets its row first, also when its input turns out unreadable, so
        that its failure is listed)."""
        known = await self.database.call(repo.get_job, payload.job_id)
        if known is not None:
            await self._mark_active(payload, run)
        try:
            await asyncio.to_thread(self.storage.download_file, payload.input_key, source, cancel=run.transfer_cancel)
        except ObjectNotFound:
            if known is None:
                await self.database.call(repo.ensure_from_payload, payload, _unreadable_fields(None))
            raise UnrecoverableError(
                f"the input {payload.input_name} is not in storage (key {payload.input_key}): "
                "it was deleted or never uploaded; submit the file again"
            ) from None
        except TransferCancelled:
            raise JobCancelled() from None
        self._check_cancel(run)
        try:
            info = await self._probe(source, payload.input_name)
        except UnrecoverableError:
            if known is None:
                await self.database.call(repo.ensure_from_payload, payload, _unreadable_fields(source))
            raise
        if known is None:
            await self.database.call(repo.ensure_from_payload, payload, repo.probe_fields(info))
            await self._mark_active(payload, run)
        return info

    async def _transcode(
        self, job: Job, payload: JobPayload, run: RunningJob, source: Path, target: Path, info: MediaInfo
    ) -> FFmpegResult:
        """FFmpeg from ``source`` to ``target``, its progress reported as it goes."""
        config = payload.config
        args = build_args(self.ffmpeg, source, target, config, info, threads=self.threads)
        try:
            result = await run_ffmpeg(
                args,
                duration=info.duration,
                on_progress=self._progress_reporter(job, run),
                cancel=run.cancel,
                progress_timeout=self.progress_timeout,
            )
        except FFmpegError as exc:
            if run.cancel.is_set():
                raise JobCancelled() from None
            if isinstance(exc, FFmpegStalled):  # a hang need not come back: worth another try
                log.warning(
                    "job %s: %s at %.1f %% (run %d); the job is retried while attempts remain",
                    payload.job_id,
                    exc.reason,
                    run.progress,
                    run.attempt,
                )
                if self.metrics is not None:
                    self.metrics.count_stall()
                raise
            if _killed_by_signal(exc):
                raise  # OOM killer or an operator: worth another try
            if NO_SPACE in (exc.log_tail or ""):
                raise self._work_dir_full(source.parent) from None  # the run's folder
            # FFmpeg names its files by their paths in our work dir, which the user never saw.
            reason = _shown(exc.reason, {source: payload.input_name, target: f"the output ({config.output_name})"})
            raise FFmpegFailed(f"FFmpeg failed: {reason}", log_tail=exc.log_tail) from None
        if result.cancelled or run.cancel.is_set():
            raise JobCancelled()
        return result

    def _progress_reporter(self, job: Job, run: RunningJob) -> Callable[[float], Awaitable[None]]:
        """FFmpeg's progress, to the queue and the database at most every ``PROGRESS_INTERVAL_S``."""
        last_write = 0.0
        queue_quiet_until = 0.0  # after a report Redis did not take: skip the queue for a while

        async def on_progress(percent: float) -> None:
            nonlocal last_write, queue_quiet_until
            if run.cancel.is_set():  # a killed FFmpeg still prints "progress=end": not a 100 %
                return
            run.progress = percent
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL_S or percent >= 100:
                last_write = now
                # FFmpeg's progress is read while this runs: a silent Redis must not hold it up.
                if now >= queue_quiet_until and not await _report_progress(job, percent):
                    queue_quiet_until = time.monotonic() + PROGRESS_QUIET_S
                await self.database.record_progress(run.job_id, percent)

        return on_progress

    async def _upload(
        self, payload: JobPayload, run: RunningJob, target: Path, out_info: MediaInfo
    ) -> tuple[str, list[dict[str, Any]]]:
        """The output, stored under a key of this run's own; its key and the row's outputs record."""
        config = payload.config
        key = output_key(payload.job_id, run.attempt, output_filename(payload.input_name, config.output_name))
        self._check_cancel(run)
        # The lock is checked at the two steps that leave something behind (an upload, the row),
        # not only when BullMQ's renewal fails: a node that wakes with its transcode done gets here
        # before its first renewal.
        await self._check_lock(run)
        run.output_key = key
        try:
            size = await asyncio.to_thread(self.storage.upload_file, target, key, cancel=run.transfer_cancel)
        except TransferCancelled:
            raise JobCancelled() from None
        except Exception as exc:
            if _disk_full(exc):  # the storage's disk, not this node's work dir: see StorageFull
                raise StorageFull(
                    f"the storage has no space left for the output of {payload.input_name} "
                    f"({key}); free some space there"
                ) from exc
            raise
        return key, [
            outputs_record(
                config, key=key, size=size, width=out_info.width, height=out_info.height, duration=out_info.duration
            )
        ]

    async def _finish(
        self, payload: JobPayload, run: RunningJob, key: str, outputs: list[dict[str, Any]], log_tail: str
    ) -> None:
        """Complete the row, unless another run or the user settled it meanwhile."""
        await self._check_lock(run)
        won = await self.database.call(
            repo.finish_job,
            payload.job_id,
            JobStatus.COMPLETED.value,
            attempt=run.attempt,
            outputs=outputs,
            log_tail=log_tail,
            node=self.node_name,
        )
        if not won:
            # A try that committed just before the link broke makes the retry "lose" to itself.
            row = await self.database.call(repo.get_job, payload.job_id)
            if not (row is not None and row.status == JobStatus.COMPLETED.value and key in _keys(row.outputs)):
                raise await self._settled_elsewhere(payload.job_id, key, row)

    async def _settled_elsewhere(self, job_id: str, key: str, row: JobRow | None) -> Exception:
        """The row was settled while this run finished: another run completed it first, or the user
        cancelled it. Delete this run's output and return how the run ends: with the row's result
        (so BullMQ's return value names the output and node that the row names), or cancelled."""
        if row is not None and row.status == JobStatus.COMPLETED.value:
            log.warning("job %s was finished by another run; deleting this run's output", job_id)
            ending: Exception = AlreadyCompleted(row.outputs or [], row.node)
        else:
            log.warning("job %s was cancelled as this run finished; deleting this run's output", job_id)
            ending = JobCancelled()
        await asyncio.to_thread(self.storage.delete, key)
        return ending

    async def _mark_active(self, payload: JobPayload, run: RunningJob) -> None:
        ok = await self.database.call(repo.mark_active, payload.job_id, self.node_name, run.attempt)
        if not ok:
            row = await self.database.call(repo.get_job, payload.job_id)
            if row is not None and row.status == JobStatus.COMPLETED.value:
                # An earlier run finished the row, then its node died before telling BullMQ.
                raise AlreadyCompleted(row.outputs or [], row.node)
            raise JobCancelled()  # cancelled meanwhile: a stale queue entry
        if self.metrics is not None:
            job = await self.database.call(repo.get_job, payload.job_id)
            if job is not None and job.queue_wait_seconds is not None and run.attempt == 1:
                self.metrics.observe_queue_wait(job.queue_wait_seconds)
            self.metrics.set_active(len(self.running))

    async def _probe(self, path: Path, shown_name: str) -> MediaInfo:
        try:
            return await asyncio.to_thread(probe, path)
        except NotAVideoError as exc:
            # probe names the file it read, our scratch copy ("input.mp4"), which the user never
            # saw; the reason on the job must name the file they know.
            raise UnrecoverableError(_shown(str(exc), {path: shown_name})) from None

    async def _verify(self, target: Path, source: MediaInfo, config: OutputConfig, shown_name: str) -> MediaInfo:
        """Check the output before calling the job done: readable, right streams, full length.

        A failure is final: the same FFmpeg on the same input would make the same output again.
        """
        try:
            out = await asyncio.to_thread(probe, target)
        except NotAVideoError as exc:
            reason = _shown(str(exc), {target: "it"})
            raise UnrecoverableError(f"FFmpeg's output of {shown_name} is not readable: {reason}") from None
        problems = []
        if out.video_codec != config.video_codec:
            problems.append(f"video codec {out.video_codec}, expected {config.video_codec}")
        wants_audio = config.include_audio and source.audio_codec is not None
        if wants_audio and out.audio_codec != config.audio_codec:
            problems.append(f"audio codec {out.audio_codec}, expected {config.audio_codec}")
        if not wants_audio and out.audio_codec is not None:
            problems.append("has audio, expected none")
        if abs(out.duration - source.duration) > max(DURATION_TOLERANCE_S, source.duration * 0.01):
            problems.append(f"lasts {out.duration:.2f} s, source lasts {source.duration:.2f} s")
        if problems:
            raise UnrecoverableError(f"the output of {shown_name} failed verification: " + "; ".join(problems))
        return out

    def _check_cancel(self, run: RunningJob) -> None:
        if run.cancel.is_set():
            raise JobCancelled()

    # -- no room in the work dir --------------------------------------------------------------
    async def _check_room(self, payload: JobPayload) -> None:
        """An input larger than the free space goes back before a byte of it is downloaded."""
        if self.disk is None:
            return
        size = await asyncio.to_thread(self.storage.size, payload.input_key)
        free = await asyncio.to_thread(self.disk.free)
        if size is not None and size > free:
            raise WorkDirFull(self.node_name, self.work_dir, needed=size, free=free)

    def _work_dir_full(self, job_dir: Path) -> WorkDirFull:
        """ENOSPC during a run: the job needed more than what its run folder held when the disk filled."""
        held = sum(f.stat().st_size for f in job_dir.rglob("*") if f.is_file()) if job_dir.is_dir() else 0
        return WorkDirFull(self.node_name, self.work_dir, needed=held, free=shutil.disk_usage(self.work_dir).free)

    # -- back to the queue, no attempt used -------------------------------------------------------
    async def _hand_back_for_room(self, job: Job, token: str, payload: JobPayload, exc: WorkDirFull) -> bool:
        """Back to the queue without using an attempt, while another node may have room; False when
        none may (the run then fails like any other, and its attempts run out)."""
        if self.disk is None:
            return False
        try:
            elsewhere = bool(
                self.room_elsewhere and await asyncio.wait_for(self.room_elsewhere(payload.job_id), HAND_BACK_TIMEOUT_S)
            )
        except Exception as exc_redis:  # Redis away: the queue's retry takes over
            log.debug("job %s: cannot tell whether another node has room: %r", payload.job_id, exc_redis)
            elsewhere = False
        await self.disk.no_room(exc.needed, elsewhere)
        if not elsewhere:
            return False
        log.info(
            "job %s: handed back to the queue for a node with room (this one has %.1f MB free, the job "
            "needs about %.1f MB)",
            payload.job_id,
            self.disk.free() / 1e6,
            exc.needed / 1e6,
        )
        await self.database.record(
            payload.job_id, "the hand back", repo.requeue, payload.job_id, note=f"handed back: {exc}", budget=2.0
        )
        await job.moveToDelayed(int((time.time() + ROOM_HAND_BACK_DELAY_S) * 1000), token)
        if self.metrics is not None:
            self.metrics.count_hand_back("disk_full")
        return True

    async def _hand_back_for_outage(self, job: Job, token: str, payload: JobPayload, reason: str) -> None:
        """The database stayed away: back to the queue, no attempt used, no row written (we can't).

        The row may say "active" on this node meanwhile; the next run's mark_active (or the
        reconciler) sets it right once the database answers.
        """
        log.warning(
            "job %s: %s; handing the job back to the queue (next run in %.0f s)",
            payload.job_id,
            reason,
            HAND_BACK_DELAY_S,
        )
        await job.moveToDelayed(int((time.time() + HAND_BACK_DELAY_S) * 1000), token)
        if self.metrics is not None:
            self.metrics.count_hand_back("database_unreachable")

    async def _hand_back_for_stop(self, job: Job, token: str, payload: JobPayload) -> None:
        """Cold stop: give the job back to the queue at once, without using up an attempt."""
        # The row first: once the job is back in the queue another node may take it at once, and
        # our "queued" must not overwrite its "active".
        # A cold stop is meant to be quick: wait for a database that is away only briefly.
        await self.database.record(
            payload.job_id,
            "the hand back",
            repo.requeue,
            payload.job_id,
            note=f"handed back by node {self.node_name}",
            budget=2.0,
        )
        try:  # and for a Redis that answers at once: a silent one must not hold the stop
            await asyncio.wait_for(job.moveToDelayed(int(time.time() * 1000), token), HAND_BACK_TIMEOUT_S)
        except Exception as exc:
            log.warning(
                "job %s: could not hand it back (%s); it runs again once its lock expires",
                payload.job_id,
                _redis_reason(exc, HAND_BACK_TIMEOUT_S),
            )
            return
        if self.metrics is not None:
            self.metrics.count_hand_back("stop")
        # A job delayed until "now" still sits in BullMQ's delayed set until some worker happens to
        # promote it: with no other node running it showed as "delayed", not waiting, in dashboards
        # and in queue_jobs{state="waiting"}. Promote it so it is back in wait at once.
        try:
            await asyncio.wait_for(job.promote(), HAND_BACK_TIMEOUT_S)
        except Exception as exc:  # another worker promoted (and maybe took) it first: fine
            log.debug("job %s was promoted by someone else: %s", payload.job_id, exc)

    # -- control ---------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        run = self.running.get(job_id)
        if run is None:
            return False
        run.cancel.set()
        run.transfer_cancel.set()
        return True

    def hand_back_all(self) -> None:
        for run in self.running.values():
            run.hand_back = True
            run.cancel.set()
            run.transfer_cancel.set()

    # -- the lock --------------------------------------------------------------------------------
    async def check_lock(self, job_id: str) -> None:
        """BullMQ could not renew a job's lock: stop its run at once if another run holds it now."""
        run = self.running.get(job_id)
        if run is not None and not run.lost_lock and await self._lock_taken(run):
            self._lose(run)

    async def _check_lock(self, run: RunningJob) -> None:
        if run.lost_lock or await self._lock_taken(run):
            self._lose(run)
            raise LockLost()

    async def _lock_taken(self, run: RunningJob) -> bool:
        """Whether the job's lock is known to hold another token than this run's (or none: it ran
        out, and BullMQ's stalled check gives the job to another run). A job the queue lost (Redis
        lost its data) has no other run: this one carries on, and the row keeps its result."""
        if self.lock_holder is None or not run.token:
            return False
        try:
            holder = await asyncio.wait_for(self.lock_holder(run.job_id), LOCK_CHECK_TIMEOUT_S)
        except Exception as exc:  # Redis away: not known, so carry on; BullMQ refuses a stale completion
            log.debug("job %s: could not read its lock: %s", run.job_id, exc)
            return False
        return holder is not None and holder != run.token

    def _lose(self, run: RunningJob) -> None:
        run.lost_lock = True
        run.cancel.set()  # FFmpeg's group is stopped at once
        run.transfer_cancel.set()

    async def _abandon(self, run: RunningJob) -> None:
        """End a run that lost its lock: its work dir goes (``__call__``'s ``finally``) and so does
        its upload, if it made one; the row and the queue's job are the other run's."""
        log.warning(
            "job %s: run %d lost its lock to another run (this node was frozen or cut off from Redis "
            "for longer than the lock); stopped it and left the job to that run",
            run.job_id,
            run.attempt,
        )
        if run.output_key is None:
            return
        try:
            await asyncio.to_thread(self.storage.delete, run.output_key)
        except Exception as exc:  # the reconciler deletes outputs that no row names
            log.warning("job %s: could not delete this run's output %s: %s", run.job_id, run.output_key, exc)


def _result(outputs: list[dict[str, Any]], node: str | None) -> dict[str, Any]:
    """BullMQ's return value, made from what the row holds, whichever run made it: the queue and
    the row name the same outputs and the same node."""
    primary = outputs[0] if outputs else {}
    return {
        "outputs": outputs,
        "width": primary.get("width"),
        "height": primary.get("height"),
        "duration": primary.get("duration"),
        "node": node,
    }


def _keys(outputs: list[dict[str, Any]] | None) -> list[str | None]:
    return [o.get("key") for o in outputs or [] if isinstance(o, dict)]


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ENOSPC is behind this error (storage wraps the OSError in its own error)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if NO_SPACE in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _report_progress(job: Job, percent: float) -> bool:
    """The bar in the queue: nice to have, so a Redis away or silent skips it (quickly)."""
    try:
        await asyncio.wait_for(job.updateProgress(round(percent, 1)), PROGRESS_SEND_TIMEOUT_S)
        return True
    except Exception as exc:  # never fail (or stall) the transcode for it
        log.debug("job %s: progress not sent to the queue: %r", job.id, exc)
        return False


def _redis_reason(exc: BaseException, timeout: float) -> str:
    """A timeout carries no words of its own: say what it means."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or not str(exc):
        return f"Redis gave no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}"


def _killed_by_signal(exc: FFmpegError) -> bool:
    return exc.returncode is not None and exc.returncode < 0


def _log_tail(exc: BaseException) -> str | None:
    """FFmpeg's last lines, for the job's log, when FFmpeg is what failed."""
    return exc.log_tail if isinstance(exc, (FFmpegError, FFmpegFailed)) else None


def _reason(exc: Exception) -> str:
    if isinstance(exc, (WorkDirFull, StorageError, FFmpegStalled)):  # their text is written for users already
        return str(exc)
    if isinstance(exc, sa.exc.SQLAlchemyError):  # its text holds SQL and values: for the log, not users
        return "the database refused to record the job; the node's log says why"
    return describe(exc).rstrip(": ")  # no dangling ":" where the first line ends in one


def _shown(text: str, names: dict[Path, str]) -> str:
    """``text`` with our scratch paths (as FFmpeg writes them: ``file:<path>``, path, bare name)
    replaced by the names the user knows."""
    for path, name in names.items():
        for form in (f"file:{path}", str(path)):
            text = text.replace(form, name)
        text = re.sub(rf"(?<![\w.-]){re.escape(path.name)}(?![\w.-])", name, text)
    return text


def _unreadable_fields(source: Path | None) -> dict[str, Any]:
    """Video columns for an input that could not be probed (only its size is known) or, with no
    ``source``, that is not in storage at all."""
    return {
        "size": source.stat().st_size if source else 0,
        "duration": 0.0,
        "width": 0,
        "height": 0,
        "video_codec": "",
        "container": "unreadable" if source else "missing",
    }
