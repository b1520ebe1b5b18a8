"""Several uploads at once, through the background runner, each cancellable on its own.

``UploadController.start(key, checked_file, config)`` queues an upload under the caller's ``key``
(the page uses its row ids); at most ``max_concurrent`` run at a time, the rest wait their turn.
Each upload runs ``farm.submit_checked`` on a runner thread, which uploads the file, records the
video and job, and enqueues the job: the job exists only once its upload has finished. Progress
comes back at most ~10 times a second per upload, with the speed in bytes per second.

Cancelling sets the upload's ``threading.Event``; the storage backend stops the transfer and
leaves nothing under the key, and no job is created. A cancel that arrives after the upload was
already committed (the last chunk was on its way) cancels the job that was just created, so what
the user asked for still holds: nothing runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from app.runner import BackgroundRunner
from app.services import AppServices
from farm.client import CheckedFile, FarmError, StorageError, TransferCancelled
from farm.domain.job import Job
from farm.domain.jobspec import OutputConfig

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1


@dataclass
class _Upload:
    key: int
    item: CheckedFile
    config: OutputConfig
    cancel: threading.Event = field(default_factory=threading.Event)
    running: bool = False


class _LateCancel(Exception):
    """The upload finished before the cancel reached it; the job it made was cancelled."""

    def __init__(self, job: Job):
        super().__init__(job.id)
        self.job = job


class _Meter:
    """Runs on the upload's thread: throttles progress, measures speed, applies a rate limit."""

    def __init__(self, emit, key: int, cancel: threading.Event, rate_limit: float | None):
        self.emit, self.key, self.cancel, self.rate_limit = emit, key, cancel, rate_limit
        self.start = self.last_emit = time.monotonic()
        self.last_done = 0
        self.speed = 0.0

    def __call__(self, _path, done: int, total: int) -> None:
        now = time.monotonic()
        if self.rate_limit:
            # Sleeping on the cancel event keeps a cancel prompt while the transfer is held back.
            ahead = done / self.rate_limit - (now - self.start)
            if ahead > 0:
                self.cancel.wait(ahead)
                now = time.monotonic()
        elapsed = now - self.last_emit
        if elapsed < PROGRESS_INTERVAL_S and done < total:
            return
        if elapsed > 0:
            instant = (done - self.last_done) / elapsed
            # A short moving average: steady enough to read, quick to follow a change.
            self.speed = instant if self.speed == 0 else 0.6 * self.speed + 0.4 * instant
        self.last_emit, self.last_done = now, done
        self.emit(self.key, done, total, self.speed)


class UploadController(QObject):
    """Runs uploads; signals carry the caller's key. Lives on the GUI thread."""

    started = Signal(int)  # key: its transfer began
    progress = Signal(int, object, object, float)  # key, bytes done, bytes total, bytes per second
    submitted = Signal(int, dict)  # key, the created job's JSON
    cancelled = Signal(int, str)  # key, a note ("" or what happened to a job made just before)
    failed = Signal(int, str)  # key, the reason in words
    _progress_from_thread = Signal(int, object, object, float)

    def __init__(
        self,
        services: AppServices,
        runner: BackgroundRunner,
        max_concurrent: int = 3,
        rate_limit: float | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.services = services
        self.runner = runner
        self.max_concurrent = max_concurrent
        self.rate_limit = rate_limit  # bytes per second per upload; None: as fast as it goes
        self._waiting: deque[_Upload] = deque()
        self._running: dict[int, _Upload] = {}
        # Emitted from the upload's thread; the connection is queued onto this object's thread.
        self._progress_from_thread.connect(self._relay_progress)

    # -- what the page asks ---------------------------------------------------------------------
    def start(self, key: int, item: CheckedFile, config: OutputConfig) -> None:
        if self.is_active(key):
            return
        self._waiting.append(_Upload(key, item, config))
        self._pump()

    def cancel(self, key: int) -> None:
        for waiting in self._waiting:
            if waiting.key == key:
                self._waiting.remove(waiting)
                self.cancelled.emit(key, "")
                return
        running = self._running.get(key)
        if running is not None:
            running.cancel.set()  # the runner's callback reports the outcome

    def cancel_all(self) -> None:
        for upload in list(self._waiting):
            self.cancel(upload.key)
        for upload in self._running.values():
            upload.cancel.set()

    def is_active(self, key: int) -> bool:
        return key in self._running or any(u.key == key for u in self._waiting)

    @property
    def active_count(self) -> int:
        return len(self._running) + len(self._waiting)

    # -- running ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        while self._waiting and len(self._running) < self.max_concurrent:
            upload = self._waiting.popleft()
            self._running[upload.key] = upload
            self._run(upload)

    def _run(self, upload: _Upload) -> None:
        farm = self.services.farm  # taken now: the settings may be replaced while it runs
        meter = _Meter(self._progress_from_thread.emit, upload.key, upload.cancel, self.rate_limit)

        def task() -> Job:
            job = farm.submit_checked(upload.item, upload.config, progress=meter, cancel=upload.cancel)
            if upload.cancel.is_set():
                try:
                    farm.cancel(job.id)
                except FarmError as exc:  # it runs already, or is gone: it exists, so report it
                    log.warning("could not cancel job %s made by a late-cancelled upload: %s", job.id, exc)
                    return job
                raise _LateCancel(job)
            return job

        self.started.emit(upload.key)
        self.runner.run(task, lambda job: self._done(upload, job), lambda exc: self._error(upload, exc))

    def _relay_progress(self, key: int, done: int, total: int, speed: float) -> None:
        if key in self._running and not self._running[key].cancel.is_set():
            self.progress.emit(key, done, total, speed)

    def _done(self, upload: _Upload, job: Job) -> None:
        self._running.pop(upload.key, None)
        self.submitted.emit(upload.key, job.to_json())
        self._pump()

    def _error(self, upload: _Upload, exc: Exception) -> None:
        self._running.pop(upload.key, None)
        if isinstance(exc, TransferCancelled):
            self.cancelled.emit(upload.key, "")
        elif isinstance(exc, _LateCancel):
            self.cancelled.emit(upload.key, f"the upload had just finished; job {exc.job.id[:8]} was cancelled")
        else:
            log.warning("upload of %s failed: %s\n%s", upload.item.path, exc, getattr(exc, "traceback_text", ""))
            self.failed.emit(upload.key, _reason(exc))
        self._pump()


def _reason(exc: Exception) -> str:
    """Our own errors already say what failed and what to do; anything else gets its type named."""
    if isinstance(exc, (FarmError, StorageError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
