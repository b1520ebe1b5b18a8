"""The farm as a client sees it: jobs, their storage, and the nodes.

One synchronous facade over the database, storage, queue and node registry, and the only way in
for the ``encodeflow`` CLI and the desktop panel (which calls it from its background runner, never
from the GUI thread). Services are opened lazily, so ``encodeflow jobs`` needs no storage and
``encodeflow nodes`` needs no database.

Jobs come back as ``farm.domain.job.Job`` values, nodes as ``farm.domain.nodes.NodeStatus``. The
storage errors a caller may catch (``StorageError``, ``TransferCancelled``) and the listing's
``StoredObject`` are offered here too, so that no caller needs the storage backends.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from farm.base.errors import EXIT_USAGE, FarmError
from farm.base.redact import redact_text
from farm.base.settings import Settings
from farm.base.untrusted import storable
from farm.domain.job import Job
from farm.domain.jobspec import OutputConfig, validate_priority
from farm.domain.media import MediaInfo, NotAVideoError, display_name, probe
from farm.domain.nodes import DESIRED_STATES, NodeStatus, Sample
from farm.domain.object_keys import input_key, sanitize_name
from farm.domain.payload import queue_payload
from farm.domain.status import ENDED_STATUSES, OPEN_STATUSES, RETRYABLE_STATUSES, JobStatus
from farm.services.checks import check_redis
from farm.services.db import repo
from farm.services.db.engine import Database, open_database
from farm.services.embedded import resolve_redis_url, running_embedded_redis
from farm.services.fleet_monitor import FarmMonitor, FarmSnapshot
from farm.services.queue import REDIS_READ_TIMEOUT_S, QueueClient, QueueStateError
from farm.services.registry import NodeRegistry
from farm.services.storage import RetryPolicy, Storage, StorageError, StoredObject, TransferCancelled, open_storage

__all__ = [
    "CheckedFile",
    "Farm",
    "FarmError",
    "FarmMonitor",
    "FarmSnapshot",
    "FarmSummary",
    "REDIS_READ_TIMEOUT_S",
    "StorageError",
    "StoredObject",
    "SubmitError",
    "TransferCancelled",
    "UnknownJobError",
    "check_inputs",
]

CANCEL_WAIT_S = 10.0  # how long `cancel` waits for the node to confirm before answering "requested"
RECENT_JOBS = 10  # the dashboard's latest jobs
T = TypeVar("T")


class SubmitError(FarmError):
    """Input refused before anything was uploaded or enqueued (the CLI's exit 2)."""

    exit_code = EXIT_USAGE


class UnknownJobError(FarmError):
    """No job has that id (the CLI's exit 2)."""

    exit_code = EXIT_USAGE


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


@dataclass(frozen=True)
class FarmSummary:
    """The dashboard's numbers: jobs per status, what ended in the last hour, the latest jobs."""

    by_status: dict[str, int]  # every status, 0 included
    last_hour: dict[str, int]  # completed, failed and cancelled since an hour ago
    recent: list[Job]  # newest first


class Farm:
    def __init__(self, settings: Settings, *, start_embedded: bool = True):
        self.settings = settings
        self.start_embedded = start_embedded  # may start the local farm's Redis (the CLI's submit)
        self._redis_url: str | None = None

    # -- services, opened on first use ------------------------------------------------------
    @cached_property
    def db(self) -> Database:
        return open_database(self.settings.effective_database_url)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings.effective_storage_url, RetryPolicy.from_settings(self.settings))

    def open(self) -> None:
        """Open the database and the storage now (the panel does it once, before its threads race to)."""
        self.db  # noqa: B018 - opening is the point
        self.storage  # noqa: B018

    @property
    def redis_url(self) -> str:
        """The farm's Redis: the configured one, else the local farm's. A Farm that may start the
        local farm's Redis does so once and keeps its address; one that may not asks each time, since
        the local farm may start (or stop) meanwhile, and raises while it does not run."""
        if self._redis_url is not None:
            return self._redis_url
        url = resolve_redis_url(self.settings, start=self.start_embedded)
        if self.start_embedded:
            self._redis_url = url
        return url

    def local_redis_running(self) -> bool:
        """Whether the local farm's Redis (the data dir's embedded one) is up; raises if it hangs."""
        return running_embedded_redis(self.settings) is not None

    def _queue_call(self, fn: Callable[[QueueClient], Awaitable[T]]) -> T:
        """Run ``fn(queue_client)`` (a coroutine function) with a short-lived async client."""

        async def call() -> T:
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

    def submit(
        self,
        paths: Iterable[Path],
        config: OutputConfig,
        *,
        priority: int = 0,
        submitted_by: str | None = None,
        progress: Callable[[Path, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Job]:
        """Upload, record and enqueue one job per file; returns the jobs."""
        validate_priority(priority)
        checked = check_inputs(paths)
        submitted_by = submitted_by or _user()
        self.check_queue()  # once for the batch; each file's submit_checked need not ask again
        jobs: list[Job] = []
        for item in checked:
            try:
                jobs.append(
                    self.submit_checked(
                        item,
                        config,
                        priority=priority,
                        submitted_by=submitted_by,
                        progress=progress,
                        cancel=cancel,
                        check_queue=False,
                    )
                )
            except TransferCancelled:  # a cancel is not a failed file (and is a FarmError too)
                raise
            except FarmError as exc:
                if not jobs:
                    raise
                done = ", ".join(job.id for job in jobs)
                raise FarmError(f"{exc} (the {len(jobs)} file(s) before it were submitted: {done})") from exc
        return jobs

    def submit_checked(
        self,
        item: CheckedFile,
        config: OutputConfig,
        *,
        priority: int = 0,
        submitted_by: str | None = None,
        progress: Callable[[Path, int, int], None] | None = None,
        cancel: threading.Event | None = None,
        check_queue: bool = True,
    ) -> Job:
        if check_queue:
            self.check_queue()
        video_id = str(uuid.uuid4())
        name = storable(item.path.name)  # a name that is not UTF-8 could not be recorded or enqueued
        key = input_key(video_id, name)
        total = item.path.stat().st_size

        def uploaded(done: int) -> None:
            if progress is not None:
                progress(item.path, done, total)

        try:
            size = self.storage.upload_file(item.path, key, progress=uploaded if progress else None, cancel=cancel)
        except TransferCancelled:
            raise
        except StorageError as exc:
            # The storage leaves nothing of a failed upload, and no row exists yet: nothing to undo.
            raise FarmError(f"could not upload {display_name(item.path.name)}, so no job was created: {exc}") from exc
        info = item.info
        video = repo.create_video(
            self.db,
            id=video_id,
            name=name,
            key=key,
            submitted_by=submitted_by or _user(),
            **repo.probe_fields(info) | {"size": size},  # the size as stored
        )
        job = repo.create_job(self.db, video.id, config.to_payload(), priority=priority)
        payload = queue_payload(job.id, key, name, config, video_id=video.id)
        try:
            self._queue_call(lambda q: q.enqueue(job.id, payload, priority=priority))
        except Exception as exc:
            reason = redact_text(str(exc))  # it goes to the job row and the screen: no password in it
            repo.finish_job(self.db, job.id, JobStatus.FAILED.value, attempt=0, error=f"could not enqueue: {reason}")
            raise FarmError(f"uploaded {display_name(item.path.name)} but could not enqueue it: {reason}") from exc
        return self.show(job.id)

    # -- reading jobs -----------------------------------------------------------------------------
    def show(self, job_id: str) -> Job:
        found = repo.get_job(self.db, job_id)
        if found is None:
            raise UnknownJobError(f"no job {job_id!r}; `encodeflow jobs` lists the known ones")
        return repo.to_job(found)

    def jobs(
        self,
        status: str | None = None,
        text: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        since: datetime | None = None,
        order_by: str = "created_at",
        descending: bool = True,
    ) -> list[Job]:
        """One page of the jobs that match (``text``: part of the file name or the job id; created
        at or after ``since``), sorted by ``order_by`` (``farm.domain.job.ORDER_FIELDS``), newest first."""
        return [
            repo.to_job(job, video)
            for job, video in repo.list_jobs(
                self.db,
                status=status,
                text=text,
                since=since,
                limit=limit,
                offset=offset,
                order_by=order_by,
                descending=descending,
            )
        ]

    def count_jobs(self, status: str | None = None, text: str | None = None, *, since: datetime | None = None) -> int:
        """How many jobs ``jobs`` pages through with the same filters."""
        return repo.count_jobs(self.db, status=status, text=text, since=since)

    def jobs_by_id(self, job_ids: Iterable[str]) -> dict[str, Job | None]:
        """Each job read again; None for an id that names no job (any more)."""
        found: dict[str, Job | None] = {}
        for job_id in job_ids:
            row = repo.get_job(self.db, job_id)
            found[job_id] = repo.to_job(row) if row is not None else None
        return found

    def summary(self, recent: int = RECENT_JOBS) -> FarmSummary:
        since = datetime.now(UTC) - timedelta(hours=1)
        return FarmSummary(
            by_status=repo.count_by_status(self.db),
            last_hour=repo.finished_since(self.db, since),
            recent=self.jobs(limit=recent),
        )

    def queue_counts(self) -> dict[str, int]:
        return self._queue_call(lambda q: q.counts())

    # -- acting on jobs ---------------------------------------------------------------------------
    # Cancel and retry are safe at any moment and any number of times: each holds the job's change
    # lock (one at a time, across processes), reads the row under it, and answers with what it did;
    # FarmError (one line) when it did nothing: the job already was where asked, or cannot go there.
    def cancel(self, job_id: str) -> str:
        """Returns ``removed`` (it was waiting), ``cancelled`` (its node stopped it), ``requested``
        (its node has not confirmed within ``CANCEL_WAIT_S``) or ``absent`` (not in the queue)."""

        async def act(q: QueueClient) -> str:
            job = self.show(job_id)
            if job.status in ENDED_STATUSES:
                raise FarmError(f"job {job_id} is already {job.status}; nothing to cancel")
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
            if self.show(job_id).status in ENDED_STATUSES:
                self._cancel_overtaken(job_id)
                return "cancelled"
            await asyncio.sleep(0.2)
        return "requested"

    def _cancel_overtaken(self, job_id: str) -> None:
        """The row settled while we cancelled: fine if by our cancel, not if the run finished first."""
        status = self.show(job_id).status
        if status != JobStatus.CANCELLED:
            raise FarmError(f"job {job_id} {status} before the cancel reached its node; nothing to cancel")

    def retry(self, job_id: str) -> str:
        """Returns ``retried`` or ``requeued`` (a new BullMQ job with the same id)."""

        async def act(q: QueueClient) -> str:
            job = self.show(job_id)
            if job.status in OPEN_STATUSES:  # another retry won, or it never failed
                raise FarmError(_already_queued(job))
            if job.status not in RETRYABLE_STATUSES:
                raise FarmError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried")
            video = job.video
            if video.container == repo.REFUSED_CONTAINER:
                raise FarmError(
                    f"job {job_id} was refused for its queue payload, so it cannot be retried "
                    f"({job.error}); have its producer enqueue a corrected job"
                )
            payload = queue_payload(job_id, video.key, video.name, job.config, video_id=video.id)
            outcome = await q.retry(
                job_id, payload, priority=job.priority or 0, on_ready=lambda: repo.requeue(self.db, job_id)
            )
            if outcome == "queued":  # another BullMQ client put it back first
                raise FarmError(_already_queued(self.show(job_id)))
            return outcome

        return self._change(job_id, act)

    def _change(self, job_id: str, act: Callable[[QueueClient], Awaitable[str]]) -> str:
        """``await act(queue)`` holding the job's change lock; a refusal from the queue is a FarmError."""
        self.show(job_id)  # an unknown id is a usage error, answered before Redis is asked

        async def call(q: QueueClient) -> str:
            try:
                async with q.changing(job_id):
                    return await act(q)
            except QueueStateError as exc:
                raise FarmError(str(exc)) from None

        return self._queue_call(call)

    def download(
        self, job_id: str, dest: Path, progress: Callable[[int], None] | None = None, *, replace: bool = False
    ) -> Path:
        """The job's output saved as ``dest``, or into the folder ``dest`` under the output's name.

        A file already in that folder under that name is someone's: it is replaced only with
        ``replace`` (a file named as ``dest`` itself is the caller's choice to replace)."""
        job = self.show(job_id)
        output = job.output
        if job.status != JobStatus.COMPLETED or output is None or not output.key:
            raise FarmError(f"job {job_id} is {job.status}; only a completed job has an output to download")
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / sanitize_name(output.key.rsplit("/", 1)[-1])  # the row's key is data: never a path
            if dest.exists() and not replace:
                raise FarmError(
                    f"{dest} already exists; nothing was downloaded. Name that file as the "
                    "destination to replace it, or choose another folder"
                )
        self.storage.download_file(output.key, dest, progress=progress)
        return dest

    # -- waiting ----------------------------------------------------------------------------------
    def wait(
        self, job_ids: list[str], timeout: float | None = None, on_update: Callable[[Job], None] | None = None
    ) -> list[Job]:
        """Block until every job is finished; wakes on queue events and re-reads the database."""
        from farm.services.events import JobEventListener

        pending = set(job_ids)
        results: dict[str, Job] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = JobEventListener(self.redis_url, self.settings.queue, block_ms=500)

        def refresh(ids: Iterable[str]) -> None:
            for job_id in list(ids):
                job = self.show(job_id)
                if on_update:
                    on_update(job)
                if job.status in ENDED_STATUSES:
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

    # -- storage ----------------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        """The storage's URL as it may be shown (no secrets in it)."""
        return self.storage.url

    def stored_objects(self, prefix: str = "") -> list[StoredObject]:
        """Every object under the folder-like ``prefix`` (``""``: all of them), recursively."""
        return list(self.storage.list(prefix))

    def download_object(
        self,
        key: str,
        dest: Path,
        *,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.storage.download_file(key, dest, progress=progress, cancel=cancel)

    def delete_object(self, key: str) -> None:
        self.storage.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (never an empty one); returns how many went."""
        return self.storage.delete_prefix(prefix)

    def link(self, key: str, expires: int = 3600) -> str:
        """A URL that reads the object without credentials (S3: for ``expires`` seconds; a folder: file://)."""
        return self.storage.presigned_url(key, expires=expires)

    # -- nodes ------------------------------------------------------------------------------------
    @contextmanager
    def _registry(self) -> Iterator[NodeRegistry]:
        # One try: a server that gave no answer within the timeout will not give one to a second try.
        client = redis.Redis.from_url(
            self.redis_url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=REDIS_READ_TIMEOUT_S,
            socket_timeout=REDIS_READ_TIMEOUT_S,
        )
        try:
            yield NodeRegistry(client, self.settings.queue)
        finally:
            client.close()

    def nodes(self) -> list[NodeStatus]:
        """Every node seen lately, by name; those whose heartbeat stopped are ``offline``."""
        with self._registry() as registry:
            return registry.nodes()

    def node_samples(self, name: str, since: float | None = None) -> list[Sample]:
        """The node's CPU/memory samples, oldest first; with ``since`` (epoch s), only newer ones."""
        with self._registry() as registry:
            return registry.samples(name, since=since)

    def node_history(self) -> dict[str, list[Sample]]:
        """Every node's samples (the last ten minutes), by node name."""
        with self._registry() as registry:
            return {node.name: registry.samples(node.name) for node in registry.nodes()}

    def desired_state(self, name: str) -> str:
        """What remote control last asked of the node: ``run``, ``pause`` or ``drain``."""
        with self._registry() as registry:
            return registry.desired_state(name)

    def control_node(self, name: str, state: str) -> None:
        """Ask node ``name`` to ``run`` (resume), ``pause`` or ``drain``; it reacts within a heartbeat.

        ``UnknownNodeError`` (listing the known nodes) if no node of that name was seen."""
        if state not in DESIRED_STATES:
            raise ValueError(f"unknown node state {state!r}; choose one of {', '.join(DESIRED_STATES)}")
        with self._registry() as registry:
            registry.set_desired_state(name, state)

    def monitor(self) -> FarmMonitor:
        """A reader for a thread that polls the nodes and the queue (the panel's)."""
        return FarmMonitor(lambda: self.redis_url, self.settings.queue)


def _already_queued(job: Job) -> str:
    if job.status == JobStatus.ACTIVE:
        return f"job {job.id} is already running on {job.node}; nothing to retry"
    again = " again" if job.attempts else ""  # it ran before: another retry was first
    return f"job {job.id} is already queued{again}; nothing to retry"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
