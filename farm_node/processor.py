"""What a node does with one job, top to bottom.

mark active -> download the input -> probe -> FFmpeg (progress to the queue and the database) ->
verify the output -> upload it under a key of its own attempt -> finish the Job row with a
conditional update. A run that may be repeated (a node died, a lock was lost) is harmless: the
losing run deletes its own output, and the row is finished once.

Errors a retry cannot fix (a file that is not a video, FFmpeg refusing the input, a bad payload)
raise ``UnrecoverableError`` so BullMQ fails the job at once; anything else (storage, database,
FFmpeg killed by a signal) is retried with backoff. The job's work dir is removed on every path.

The database may go away while a job runs (PostgreSQL restarted, a network cut, an SQLite file
locked or gone). Progress writes are skipped meanwhile. The writes that matter (mark active,
finish, note a retry, record a failure) wait it out with backoff for at most the job's lock
duration (BullMQ renews the lock meanwhile); a run whose database is still gone then hands the job
back to the queue instead of completing it, so the queue never says "completed" while the row
says otherwise. Its upload, if any, stays: the next run has the same number, so it writes the same
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bullmq import UnrecoverableError
from bullmq.custom_errors import DelayedError

from farm.db import error_line, is_unreachable, repo
from farm.jobspec import OutputConfig, outputs_record
from farm.keys import output_filename, output_key, sanitize_name
from farm.media import MediaInfo, NotAVideoError, probe
from farm.payload import JobPayload, PayloadError
from farm.storage import ObjectNotFound, StorageError, TransferCancelled
from farm_node.ffmpeg_args import build_args
from farm_node.ffmpeg_runner import FFmpegError, run_ffmpeg

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5  # at most two progress writes a second per job: queue and database
DB_RETRY_FIRST_S, DB_RETRY_MAX_S = 0.5, 5.0  # backoff between tries while the database is away
HAND_BACK_DELAY_S = 5.0  # a job handed back during an outage waits this long before its next run
DURATION_TOLERANCE_S = 0.5


NO_SPACE = "No space left on device"


class JobCancelled(Exception):
    pass


class AlreadyCompleted(Exception):
    """The row was completed by an earlier run; this run only completes the queue's job."""

    def __init__(self, outputs: list):
        super().__init__("already completed")
        self.outputs = outputs


class DatabaseUnreachable(RuntimeError):
    """The database did not answer within the run's retry budget: the job goes back to the queue."""


class WorkDirFull(RuntimeError):
    """The node ran out of disk in its work dir. Retried (another node may have room)."""

    def __init__(self, node: str, work_dir: Path):
        super().__init__(f"node {node} ran out of disk space in its work dir {work_dir}; "
                         "free some space there or give the node another --work-dir")


@dataclass
class RunningJob:
    job_id: str
    name: str
    attempt: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # The same request for storage transfers, which run in threads.
    transfer_cancel: threading.Event = field(default_factory=threading.Event)
    hand_back: bool = False  # cold stop: give the job back to the queue instead of failing it
    progress: float = 0.0
    started: float = field(default_factory=time.monotonic)


class JobProcessor:
    """Runs jobs for one node. ``running`` is read by the heartbeat and the control listeners."""

    def __init__(self, *, node_name: str, db, storage, ffmpeg: str, work_dir: Path,
                 metrics=None, is_cancel_requested: Callable[[str], Any] | None = None,
                 db_retry_seconds: float = 60.0):
        self.node_name = node_name
        self.db = db
        self.storage = storage
        self.ffmpeg = ffmpeg
        self.work_dir = work_dir
        self.metrics = metrics
        self.is_cancel_requested = is_cancel_requested
        self.running: dict[str, RunningJob] = {}
        # How long a write waits out a database outage: the node passes its lock duration, since
        # waiting longer would outlive a lock that a Redis cut stopped renewing (another node may
        # be running the job by then).
        self.db_retry_seconds = db_retry_seconds
        self._db_down_since: float | None = None  # one log line per outage, not one per write

    # -- entry point (BullMQ's processor signature) ---------------------------------------------
    async def __call__(self, job, token: str) -> dict:
        # BullMQ's attemptsMade counts only runs that ended (completed, failed, retried); a run whose
        # node died bumps stalledCounter instead. Runs are numbered counting both (the row's
        # attempts, the output key attempt-<n>), so a run after a death never reuses the dead run's
        # key, which a late duplicate of it (a lost lock) would delete along with its own. The
        # budget grows by the same stalls, so "was that the last attempt?" stays BullMQ's answer.
        stalled = int(getattr(job, "stalledCounter", 0) or 0)
        attempt = int(job.attemptsMade or 0) + stalled + 1
        max_attempts = int((job.opts or {}).get("attempts") or 1) + stalled
        log.info("job %s: run %d starting (stalled %d time(s) before)", job.id, attempt, stalled)
        try:
            payload = JobPayload.parse(job.id, job.data)
        except PayloadError as exc:
            raise UnrecoverableError(f"invalid job payload: {exc}") from None
        run = RunningJob(payload.job_id, payload.input_name, attempt)
        self.running[payload.job_id] = run
        job_dir = self.work_dir / f"{sanitize_name(payload.job_id)}-{attempt}"
        started = time.monotonic()
        status: str | None = "failed"
        try:
            result = await self._run(job, payload, run, job_dir)
            status = "success"
            return result
        except AlreadyCompleted as done:
            status = None  # counted when the earlier run finished it
            return {"outputs": done.outputs, "duplicate": True}
        except DatabaseUnreachable as exc:
            status = None  # not an outcome: the job runs again once the database answers
            await self._give_back(job, token, payload, str(exc))
            raise DelayedError() from None
        except JobCancelled:
            status = "cancelled"
            if run.hand_back:
                status = None  # not an outcome: the job will run again elsewhere
                await self._hand_back(job, token, payload)
                raise DelayedError() from None
            await self._record(payload.job_id, "the cancel", repo.mark_cancelled, payload.job_id, "cancelled by user")
            raise UnrecoverableError("cancelled by user") from None
        except UnrecoverableError as exc:
            await self._fail(run, str(exc), getattr(exc, "log_tail", None))
            raise
        except Exception as exc:
            if _disk_full(exc):  # the node's problem, not the job's: another node may have room
                exc = WorkDirFull(self.node_name, self.work_dir)
            reason = _reason(exc)
            if attempt >= max_attempts:
                await self._fail(run, reason, getattr(exc, "log_tail", None))
            else:
                await self._record(payload.job_id, "the retry", repo.note_retry, payload.job_id,
                                   f"attempt {attempt} of {max_attempts} failed, will retry: {reason}")
            raise
        finally:
            self.running.pop(payload.job_id, None)
            shutil.rmtree(job_dir, ignore_errors=True)
            if self.metrics is not None:
                if status is not None:
                    self.metrics.observe_job(payload.config.format, status, time.monotonic() - started)
                self.metrics.set_active(len(self.running))

    # -- the steps -----------------------------------------------------------------------------
    async def _run(self, job, payload: JobPayload, run: RunningJob, job_dir: Path) -> dict:
        if self.is_cancel_requested and await self.is_cancel_requested(payload.job_id):
            raise JobCancelled()
        job_dir.mkdir(parents=True, exist_ok=True)
        source = job_dir / ("input" + Path(sanitize_name(payload.input_name)).suffix.lower())

        known = await self._db(repo.get_job, payload.job_id)
        if known is not None:
            await self._mark_active(payload, run)
        try:
            await asyncio.to_thread(self.storage.download_file, payload.input_key, source,
                                    cancel=run.transfer_cancel)
        except ObjectNotFound:
            raise UnrecoverableError(f"the input {payload.input_name} is not in storage (key {payload.input_key}): "
                                     "it was deleted or never uploaded; submit the file again") from None
        except TransferCancelled:
            raise JobCancelled() from None
        self._check_cancel(run)
        try:
            info = await self._probe(source, payload.input_name)
        except UnrecoverableError:
            if known is None:  # a job from another producer: record it, so its failure is listed
                await self._db(repo.ensure_from_payload, payload.job_id, payload.raw, _unreadable_fields(source))
            raise
        if known is None:
            await self._db(repo.ensure_from_payload, payload.job_id, payload.raw, _probe_fields(info, payload))
            await self._mark_active(payload, run)

        config = payload.config
        target = job_dir / f"output.{config.extension}"
        args = build_args(self.ffmpeg, source, target, config, info)
        last_write = 0.0

        async def on_progress(percent: float) -> None:
            nonlocal last_write
            if run.cancel.is_set():  # a killed FFmpeg still prints "progress=end": not a 100 %
                return
            run.progress = percent
            now = time.monotonic()
            if now - last_write >= PROGRESS_INTERVAL_S or percent >= 100:
                last_write = now
                try:
                    await job.updateProgress(round(percent, 1))
                except Exception as exc:  # Redis away: skip this report, never fail the transcode for it
                    log.debug("job %s: progress not sent to the queue: %s", payload.job_id, exc)
                await self._record_progress(payload.job_id, percent)

        try:
            result = await run_ffmpeg(args, duration=info.duration, on_progress=on_progress, cancel=run.cancel)
        except FFmpegError as exc:
            if run.cancel.is_set():
                raise JobCancelled() from None
            if _killed_by_signal(exc):
                raise  # OOM killer or an operator: worth another try
            if NO_SPACE in (exc.log_tail or ""):
                raise WorkDirFull(self.node_name, self.work_dir) from None
            # FFmpeg names its files by their paths in our work dir, which the user never saw.
            shown = _shown(exc.reason, {source: payload.input_name, target: f"the output ({config.output_name})"})
            err = UnrecoverableError(f"FFmpeg failed: {shown}")
            err.log_tail = exc.log_tail
            raise err from None
        if getattr(result, "cancelled", False) or run.cancel.is_set():
            raise JobCancelled()

        out_info = await self._verify(target, info, config, payload.input_name)
        key = output_key(payload.job_id, run.attempt, output_filename(payload.input_name, config.output_name))
        self._check_cancel(run)
        try:
            size = await asyncio.to_thread(self.storage.upload_file, target, key, cancel=run.transfer_cancel)
        except TransferCancelled:
            raise JobCancelled() from None
        outputs = [outputs_record(config, key=key, size=size)]
        won = await self._db(repo.finish_job, payload.job_id, "completed", attempt=run.attempt,
                             outputs=outputs, log_tail=result.log_tail)
        if not won:
            # A try that committed just before the link broke makes the retry "lose" to itself.
            row = await self._db(repo.get_job, payload.job_id)
            won = row is not None and row.status == "completed" and key in [o.get("key") for o in row.outputs or []]
        if not won:
            # Another run finished this job first (we lost our lock): leave no second result.
            log.warning("job %s was finished by another run; deleting this run's output", payload.job_id)
            await asyncio.to_thread(self.storage.delete, key)
            return {"duplicate": True}
        await job.updateProgress(100)
        return {"outputs": outputs, "width": out_info.width, "height": out_info.height,
                "duration": out_info.duration, "node": self.node_name}

    async def _mark_active(self, payload: JobPayload, run: RunningJob) -> None:
        ok = await self._db(repo.mark_active, payload.job_id, self.node_name, run.attempt)
        if not ok:
            row = await self._db(repo.get_job, payload.job_id)
            if row is not None and row.status == "completed":
                # An earlier run finished the row, then its node died before telling BullMQ.
                raise AlreadyCompleted(row.outputs or [])
            raise JobCancelled()  # cancelled meanwhile: a stale queue entry
        if self.metrics is not None:
            job = await self._db(repo.get_job, payload.job_id)
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

    async def _fail(self, run: RunningJob, reason: str, log_tail: str | None) -> None:
        await self._record(run.job_id, "the failure", repo.finish_job, run.job_id, "failed", attempt=run.attempt,
                           error=reason, log_tail=log_tail)

    async def _record(self, job_id: str, what: str, call: Callable, *args: Any, **kwargs: Any) -> None:
        """A write that goes with a failure BullMQ records anyway: if the database stays away, the
        queue's record stands and the reconciler brings the row in line (or the next run does)."""
        try:
            await self._db(call, *args, **kwargs)
        except DatabaseUnreachable as exc:
            log.warning("job %s: could not record %s: %s; the reconciler will", job_id, what, exc)
        except Exception:
            log.exception("job %s: could not record %s", job_id, what)

    # -- the database, which may be away for a while ------------------------------------------
    async def _db(self, call: Callable, *args: Any, budget: float | None = None, **kwargs: Any):
        """``call(self.db, ...)`` in a thread, waiting out an outage for at most ``budget`` seconds
        (default ``db_retry_seconds``); then ``DatabaseUnreachable``. Other errors are raised at once."""
        budget = self.db_retry_seconds if budget is None else budget
        deadline = time.monotonic() + budget
        pause = DB_RETRY_FIRST_S
        while True:
            try:
                result = await asyncio.to_thread(call, self.db, *args, **kwargs)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._db_down(exc)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnreachable(
                        f"the database {self.db.url} did not answer for {budget:.0f} s "
                        f"({error_line(exc)})") from None
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, DB_RETRY_MAX_S)
                continue
            self._db_up()
            return result

    async def _record_progress(self, job_id: str, percent: float) -> None:
        """The bar in the database: nice to have, so an outage skips it rather than fail the job."""
        try:
            await asyncio.to_thread(repo.update_progress, self.db, job_id, percent, self.node_name)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self._db_down(exc)
            return
        self._db_up()

    def _db_down(self, exc: BaseException) -> None:
        if self._db_down_since is None:
            self._db_down_since = time.monotonic()
            log.warning("database %s unreachable (%s); progress is not recorded and results wait until it "
                        "answers again", self.db.url, error_line(exc))

    def _db_up(self) -> None:
        if self._db_down_since is not None:
            log.info("database %s reachable again after %.1f s", self.db.url,
                        time.monotonic() - self._db_down_since)
            self._db_down_since = None

    async def _give_back(self, job, token: str, payload: JobPayload, reason: str) -> None:
        """The database stayed away: back to the queue, no attempt used, no row written (we can't).

        The row may say "active" on this node meanwhile; the next run's mark_active (or the
        reconciler) sets it right once the database answers.
        """
        log.warning("job %s: %s; handing the job back to the queue (next run in %.0f s)", payload.job_id,
                    reason, HAND_BACK_DELAY_S)
        await job.moveToDelayed(int((time.time() + HAND_BACK_DELAY_S) * 1000), token)

    async def _hand_back(self, job, token: str, payload: JobPayload) -> None:
        """Cold stop: give the job back to the queue at once, without using up an attempt."""
        # The row first: once the job is back in the queue another node may take it at once, and
        # our "queued" must not overwrite its "active".
        # A cold stop is meant to be quick: wait for a database that is away only briefly.
        await self._record(payload.job_id, "the hand back", repo.requeue, payload.job_id,
                           note=f"handed back by node {self.node_name}", budget=2.0)
        await job.moveToDelayed(int(time.time() * 1000), token)
        # A job delayed until "now" still sits in BullMQ's delayed set until some worker happens to
        # promote it: with no other node running it showed as "delayed", not waiting, in dashboards
        # and in queue_jobs{state="waiting"}. Promote it so it is back in wait at once.
        try:
            await job.promote()
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


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ENOSPC is behind this error (storage wraps the OSError in its own error)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if NO_SPACE in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _killed_by_signal(exc: FFmpegError) -> bool:
    code = getattr(exc, "returncode", None)
    return code is not None and code < 0


def _reason(exc: Exception) -> str:
    if isinstance(exc, (WorkDirFull, StorageError)):  # their text is written for users already
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _shown(text: str, names: dict[Path, str]) -> str:
    """``text`` with our scratch paths (as FFmpeg writes them: ``file:<path>``, path, bare name)
    replaced by the names the user knows."""
    for path, name in names.items():
        for form in (f"file:{path}", str(path)):
            text = text.replace(form, name)
        text = re.sub(rf"(?<![\w.-]){re.escape(path.name)}(?![\w.-])", name, text)
    return text


def _unreadable_fields(source: Path) -> dict:
    """Video columns for an input that could not be probed: only its size is known."""
    return {"size": source.stat().st_size, "duration": 0.0, "width": 0, "height": 0,
            "video_codec": "", "container": "unreadable"}


def _probe_fields(info: MediaInfo, payload: JobPayload) -> dict:
    return {
        "size": info.size, "duration": info.duration, "width": info.width, "height": info.height,
        "video_codec": info.video_codec, "audio_codec": info.audio_codec, "container": info.container,
    }
