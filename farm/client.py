"""The farm as a client sees it: submit, list, show, cancel, retry, download, nodes.

One synchronous facade over the database, storage, queue and node registry, shared by the
``encodeflow`` CLI and the desktop app (which calls it from its background runner, never from the
GUI thread). Services are opened lazily, so ``encodeflow jobs`` needs no storage and
``encodeflow nodes`` needs no database.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

from farm.services.checks import check_redis
from farm.services.db import repo
from farm.services.db.engine import open_database
from farm.services.embedded import resolve_redis_url
from farm.domain.jobspec import OutputConfig, validate_priority
from farm.domain.object_keys import input_key, sanitize_name
from farm.domain.media import MediaInfo, NotAVideoError, display_name, probe
from farm.domain.payload import JobPayload
from farm.services.queue import QueueClient, QueueStateError
from farm.base.redact import redact_text
from farm.base.settings import Settings
from farm.services.storage import RetryPolicy, StorageError, TransferCancelled, open_storage
from farm.base.untrusted import storable

TERMINAL = ("completed", "failed", "cancelled")
CANCEL_WAIT_S = 10.0  # how long `cancel` waits for the node to confirm before answering "requested"


class FarmError(RuntimeError):
    """An operation could not be done; the message says why and what to do."""


class SubmitError(FarmError):
    """Input refused before anything was uploaded or enqueued (the CLI's exit 2)."""


class UnknownJobError(FarmError):
    pass


@dataclass(frozen=True)
class CheckedFile:
    path: Path
    info: MediaInfo


def check_inputs(paths: Iterable[Path]) -> list[CheckedFile]:
    """Probe every file first, so one bad file refuses the whole submit before any upload.

    The refusal is one line whatever the names hold (a newline in a file name is shown as ``\\n``).
    """
    checked, problems = [], []
    for path in paths:
        path = Path(path)
        shown = display_name(str(path))
        if not path.exists():
            problems.append(f"{shown}: no such file")
        elif not path.is_file():
            problems.append(f"{shown}: not a regular file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{shown}: not readable (check its permissions)")
        else:
            try:
                checked.append(CheckedFile(path, probe(path)))
            except NotAVideoError as exc:
                problems.append(f"{shown}: {exc}")
    if problems:
        raise SubmitError("; ".join(problems))
    return checked


class Farm:
    def __init__(self, settings: Settings, *, start_embedded: bool = True):
        self.settings = settings
        self.start_embedded = start_embedded

    # -- services, opened on first use ------------------------------------------------------
    @cached_property
    def db(self):
        return open_database(self.settings.effective_database_url)

    @cached_property
    def storage(self):
        return open_storage(self.settings.effective_storage_url, RetryPolicy.from_settings(self.settings))

    @cached_property
    def redis_url(self) -> str:
        return resolve_redis_url(self.settings, start=self.start_embedded)

    def _queue_call(self, fn):
        """Run ``fn(queue_client)`` (a coroutine function) with a short-lived async client."""

        async def call():
            async with QueueClient(self.redis_url, self.settings.queue) as client:
                return await fn(client)

        return asyncio.run(call())

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

    # -- submitting -----------------------------------------------------------------------------
    def check_queue(self) -> None:
        """Refuse a submit up front when the queue cannot take it.

        Without this, a submit with Redis down uploaded the whole file, recorded the job and only
        then failed it "could not enqueue": minutes of upload for a failed row the user never wanted.
        """
        result = check_redis(self.redis_url)
        if not result.ok:
            raise FarmError(f"{result.message}. Nothing was uploaded; submit again once Redis answers")

    def submit(self, paths: Iterable[Path], config: OutputConfig, *, priority: int = 0,
               submitted_by: str | None = None,
               progress: Callable[[Path, int, int], None] | None = None,
               cancel: threading.Event | None = None) -> list[dict]:
        """Upload, record and enqueue one job per file; returns the jobs' JSON."""
        validate_priority(priority)
        checked = check_inputs(paths)
        submitted_by = submitted_by or _user()
        self.check_queue()  # once for the batch; each file's submit_checked need not ask again
        jobs = []
        for item in checked:
            try:
                jobs.append(self.submit_checked(item, config, priority=priority, submitted_by=submitted_by,
                                                progress=progress, cancel=cancel, check_queue=False))
            except FarmError as exc:
                if not jobs:
                    raise
                done = ", ".join(job["id"] for job in jobs)
                raise FarmError(f"{exc} (the {len(jobs)} file(s) before it were submitted: {done})") from exc
        return jobs

    def submit_checked(self, item: CheckedFile, config: OutputConfig, *, priority: int = 0,
                       submitted_by: str | None = None,
                       progress: Callable[[Path, int, int], None] | None = None,
                       cancel: threading.Event | None = None, check_queue: bool = True) -> dict:
        if check_queue:
            self.check_queue()
        video_id = str(uuid.uuid4())
        name = storable(item.path.name)  # a name that is not UTF-8 could not be recorded or enqueued
        key = input_key(video_id, name)
        total = item.path.stat().st_size
        callback = (lambda done: progress(item.path, done, total)) if progress else None
        try:
            size = self.storage.upload_file(item.path, key, progress=callback, cancel=cancel)
        except TransferCancelled:
            raise
        except StorageError as exc:
            # The storage leaves nothing of a failed upload, and no row exists yet: nothing to undo.
            raise FarmError(f"could not upload {display_name(item.path.name)}, so no job was created: "
                            f"{exc}") from exc
        info = item.info
        video = repo.create_video(
            self.db, id=video_id, name=name, key=key, size=size, duration=info.duration,
            width=info.width, height=info.height, video_codec=info.video_codec,
            audio_codec=info.audio_codec, container=info.container,
            submitted_by=submitted_by or _user(),
        )
        job = repo.create_job(self.db, video.id, config.to_payload(), priority=priority)
        payload = JobPayload.build(job.id, key, name, config, videoId=video.id)
        try:
            self._queue_call(lambda q: q.enqueue(job.id, payload, priority=priority))
        except Exception as exc:
            reason = redact_text(str(exc))  # it goes to the job row and the screen: no password in it
            repo.finish_job(self.db, job.id, "failed", attempt=0, error=f"could not enqueue: {reason}")
            raise FarmError(f"uploaded {display_name(item.path.name)} but could not enqueue it: {reason}") from exc
        return self.show(job.id)

    # -- reading ----------------------------------------------------------------------------------
    def show(self, job_id: str) -> dict:
        found = repo.get_job_with_video(self.db, job_id)
        if found is None:
            raise UnknownJobError(f"no job {job_id!r}; `encodeflow jobs` lists the known ones")
        return repo.job_to_dict(*found)

    def jobs(self, status: str | None = None, text: str | None = None, limit: int = 100,
             offset: int = 0) -> list[dict]:
        return [repo.job_to_dict(job, video) for job, video in
                repo.list_jobs(self.db, status=status, text=text, limit=limit, offset=offset)]

    def queue_counts(self) -> dict[str, int]:
        return self._queue_call(lambda q: q.counts())

    # -- acting -----------------------------------------------------------------------------------
    # Cancel and retry are safe at any moment and any number of times: each holds the job's change
    # lock (one at a time, across processes), reads the row under it, and answers with what it did;
    # FarmError (one line) when it did nothing: the job already was where asked, or cannot go there.
    def cancel(self, job_id: str) -> str:
        """Returns ``removed`` (it was waiting), ``cancelled`` (its node stopped it), ``requested``
        (its node has not confirmed within ``CANCEL_WAIT_S``) or ``absent`` (not in the queue)."""
        async def act(q: QueueClient) -> str:
            job = self.show(job_id)
            if job["status"] in TERMINAL:
                raise FarmError(f"job {job_id} is already {job['status']}; nothing to cancel")
            outcome = await q.cancel(job_id)
            if outcome == "requested":
                return await self._cancel_confirmed(job_id)
            if not repo.mark_cancelled(self.db, job_id, "cancelled by user"):
                self._cancel_overtaken(job_id)
            return outcome

        return self._change(job_id, act)

    async def _cancel_confirmed(self, job_id: str) -> str:
        """Wait a little for the node to stop the run and record the cancel, so the answer is what happened."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            if repo.get_job(self.db, job_id).status in TERMINAL:
                self._cancel_overtaken(job_id)
                return "cancelled"
            await asyncio.sleep(0.2)
        return "requested"

    def _cancel_overtaken(self, job_id: str) -> None:
        """The row settled while we cancelled: fine if by our cancel, not if the run finished first."""
        status = repo.get_job(self.db, job_id).status
        if status != "cancelled":
            raise FarmError(f"job {job_id} {status} before the cancel reached its node; nothing to cancel")

    def retry(self, job_id: str) -> str:
        """Returns ``retried`` or ``requeued`` (a new BullMQ job with the same id)."""
        async def act(q: QueueClient) -> str:
            job = self.show(job_id)
            if job["status"] in ("queued", "active"):  # another retry won, or it never failed
                raise FarmError(_already_queued(job))
            if job["status"] not in ("failed", "cancelled"):
                raise FarmError(f"job {job_id} is {job['status']}; only failed or cancelled jobs can be retried")
            if job["video"]["container"] == repo.REFUSED_CONTAINER:
                raise FarmError(f"job {job_id} was refused for its queue payload, so it cannot be retried "
                                f"({job['error']}); have its producer enqueue a corrected job")
            config = OutputConfig.from_payload(job["config"])
            video = job["video"]
            payload = JobPayload.build(job_id, video["key"], video["name"], config, videoId=video["id"])
            outcome = await q.retry(job_id, payload, priority=job.get("priority") or 0,
                                    on_ready=lambda: repo.requeue(self.db, job_id))
            if outcome == "queued":  # another BullMQ client put it back first
                raise FarmError(_already_queued(self.show(job_id)))
            return outcome

        return self._change(job_id, act)

    def _change(self, job_id: str, act) -> str:
        """``await act(queue)`` holding the job's change lock; a refusal from the queue is a FarmError."""
        self.show(job_id)  # an unknown id is a usage error, answered before Redis is asked
        async def call(q: QueueClient) -> str:
            try:
                async with q.changing(job_id):
                    return await act(q)
            except QueueStateError as exc:
                raise FarmError(str(exc)) from None

        return self._queue_call(call)

    def download(self, job_id: str, dest: Path, progress: Callable[[int], None] | None = None, *,
                 replace: bool = False) -> Path:
        """The job's output saved as ``dest``, or into the folder ``dest`` under the output's name.

        A file already in that folder under that name is someone's: it is replaced only with
        ``replace`` (a file named as ``dest`` itself is the caller's choice to replace)."""
        job = self.show(job_id)
        output = job.get("output")
        if job["status"] != "completed" or not output:
            raise FarmError(f"job {job_id} is {job['status']}; only a completed job has an output to download")
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / sanitize_name(output["key"].rsplit("/", 1)[-1])  # the row's key is data: never a path
            if dest.exists() and not replace:
                raise FarmError(f"{dest} already exists; nothing was downloaded. Name that file as the "
                                "destination to replace it, or choose another folder")
        self.storage.download_file(output["key"], dest, progress=progress)
        return dest

    # -- waiting ----------------------------------------------------------------------------------
    def wait(self, job_ids: list[str], timeout: float | None = None,
             on_update: Callable[[dict], None] | None = None) -> list[dict]:
        """Block until every job is finished; wakes on queue events and re-reads the database."""
        from farm.services.events import JobEventListener

        pending = set(job_ids)
        results: dict[str, dict] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = JobEventListener(self.redis_url, self.settings.queue, block_ms=500)

        def refresh(ids):
            for job_id in list(ids):
                job = self.show(job_id)
                if on_update:
                    on_update(job)
                if job["status"] in TERMINAL:
                    results[job_id] = job
                    pending.discard(job_id)

        refresh(pending)
        last_poll = time.monotonic()
        for event in listener.events(yield_idle=True):
            if not pending or (deadline and time.monotonic() > deadline):
                listener.stop()
                break
            # The database is the truth; events only say when to look, and a slow poll covers
            # an event lost while Redis was away.
            if time.monotonic() - last_poll > 2:
                refresh(pending)
                last_poll = time.monotonic()
            elif event is not None and event.job_id in pending:
                refresh({event.job_id})
        for job_id in pending:
            results[job_id] = self.show(job_id)
        return [results[j] for j in job_ids]


def _already_queued(job: dict) -> str:
    if job["status"] == "active":
        return f"job {job['id']} is already running on {job['node']}; nothing to retry"
    again = " again" if job["attempts"] else ""  # it ran before: another retry was first
    return f"job {job['id']} is already queued{again}; nothing to retry"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
