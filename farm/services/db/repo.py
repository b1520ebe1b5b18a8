"""What the app, the CLI and the nodes do with jobs: plain functions that take the ``Database``.

Every function runs in its own short transaction and returns detached rows (a job's video already
loaded), safe to hand to another thread. Call them off the GUI thread and off the node's event
loop (``asyncio.to_thread``).

State changes are conditional updates, so the same job run twice (BullMQ may do that after a node
stalls) is harmless: whichever run finishes first settles the job, and ``finish_job`` tells the
other one that it lost, so that it deletes its own output. ``completed`` and ``cancelled`` are
final; a ``failed`` job may be retried.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, contains_eager

from farm.base.untrusted import cut, printable, shown
from farm.domain.job import ORDER_FIELDS, JobVideo
from farm.domain.job import Job as JobView  # the ORM's Job is the row
from farm.domain.media import MediaInfo
from farm.domain.object_keys import InvalidKeyError, validate_id
from farm.domain.payload import JobPayload, PayloadError, salvage
from farm.domain.status import ENDED_STATUSES, FINAL_STATUSES, STATUSES, JobStatus
from farm.services.db.engine import Database
from farm.services.db.models import Job, Video, new_id, utcnow

LOG_TAIL_MAX_CHARS = 16_000
# Errors come from anywhere (FFmpeg, BullMQ's failedReason, which any worker writes): each is stored
# with its control characters escaped and cut to a length, so no terminal that shows it is driven
# or flooded.
ERROR_MAX_CHARS = 2000
REFUSED_CONTAINER = "refused"  # the Video row of a job refused for its payload: nothing was probed
# The Video columns a node fills from its probe of the input (other probe fields are ignored).
PROBE_FIELDS = ("size", "duration", "width", "height", "video_codec", "audio_codec", "container")
_REQUIRED_PROBE_FIELDS = ("size", "duration", "width", "height", "video_codec", "container")
# The video of a refused job gets an id derived from the job's, so two nodes make the same row.
_VIDEO_ID_NAMESPACE = uuid.UUID("5b0e3c1e-6a8f-4f0e-9d3a-6e6f64656661")


def probe_fields(info: MediaInfo) -> dict[str, Any]:
    """The Video columns (``PROBE_FIELDS``) as a probe of the input measured them."""
    return {field: getattr(info, field) for field in PROBE_FIELDS}


# -- creating --------------------------------------------------------------------------------


def create_video(
    db: Database,
    *,
    name: str,
    key: str,
    size: int,
    duration: float,
    width: int,
    height: int,
    video_codec: str,
    container: str,
    audio_codec: str | None = None,
    submitted_by: str = "",
    id: str | None = None,
) -> Video:
    """Record an uploaded input. Pass ``id`` when the upload key already contains it."""
    video = Video(
        id=id or new_id(),
        name=name,
        key=key,
        size=size,
        duration=duration,
        width=width,
        height=height,
        video_codec=video_codec,
        audio_codec=audio_codec,
        container=container,
        submitted_by=submitted_by,
        created_at=utcnow(),
    )
    with db.session() as session:
        session.add(video)
    return video


def create_job(
    db: Database, video_id: str, config: Mapping[str, Any], priority: int = 0, *, job_id: str | None = None
) -> Job:
    """Record a queued job for a video; ``config`` is the job's outputConfig payload."""
    with db.session() as session:
        video = session.get(Video, video_id)
        if video is None:
            raise LookupError(f"no video with id {video_id!r}")
        now = utcnow()
        job = Job(
            id=job_id or new_id(),
            video=video,
            config=dict(config),
            status=JobStatus.QUEUED.value,
            progress=0.0,
            priority=priority,
            attempts=0,
            outputs=[],
            created_at=now,
            updated_at=now,
        )
        session.add(job)
    return job


def ensure_from_payload(
    db: Database,
    payload: JobPayload,
    probe_fields: Mapping[str, Any],
    *,
    created_at: datetime | None = None,
) -> Job:
    """The job for a validated queue payload, creating it (and its video) if no one recorded them.

    A node calls this for every job it takes, since any BullMQ producer may have enqueued it; it
    calls ``check_payload`` first, so the video a payload names is its own. Safe to call
    concurrently from several nodes: the rows are inserted "if absent", so all callers get the
    same job. ``probe_fields`` holds the Video columns measured on the input (``PROBE_FIELDS``;
    extra keys are ignored); ``created_at`` is when the job was enqueued, if known. Only the
    fields ``JobPayload`` read and checked are stored, never the rest of the payload.
    """
    job = get_job(db, payload.job_id)
    if job is not None:
        return job
    missing = [field for field in _REQUIRED_PROBE_FIELDS if probe_fields.get(field) is None]
    if missing:
        raise ValueError(f"probe fields missing: {', '.join(missing)}")
    video = {field: probe_fields.get(field) for field in PROBE_FIELDS}
    video.update(id=payload.video_id, name=payload.input_name, key=payload.input_key, submitted_by=payload.submitted_by)
    return _insert_job(
        db, payload.job_id, video, config=payload.config.to_payload(), priority=payload.priority, created_at=created_at
    )


def check_payload(db: Database, payload: JobPayload) -> None:
    """Refuse a payload that contradicts the recorded rows, before anything is downloaded.

    ``PayloadError`` when the job is recorded with another input, or when the payload's video id
    names a video of another input: a job from the queue is never attached to a video that is not
    its own (it would show that video's name and dimensions, and change nothing of its own).
    """
    with db.session(read_only=True) as session:
        job = session.get(Job, payload.job_id)
        if job is not None:
            if job.video.key != payload.input_key:
                raise PayloadError(
                    "input.key", f"job {payload.job_id} is recorded with another input, not {shown(payload.input_key)}"
                )
            return
        video = session.get(Video, payload.video_id)
    if video is not None and video.key != payload.input_key:
        raise PayloadError(
            "videoId",
            f"video {payload.video_id} is recorded with another input, not "
            f"{shown(payload.input_key)}; a job may only be attached to its own video",
        )


def record_refusal(db: Database, bull_job_id: Any, data: Any, error: str, *, attempt: int) -> Job | None:
    """Record a job that a node refused for its payload as ``failed`` with ``error``, so the failed
    list (the farm's dead-letter list) shows it; returns its row.

    A job recorded already (by its producer) just fails, unless it is settled. Otherwise the row's id is the BullMQ id
    when that is a valid id, else ``refused-<hash of it>``; its video is a row of its own (container
    ``REFUSED_CONTAINER``, nothing probed), never one the payload names; and of the payload it
    keeps only the fields that passed their own check (``farm.domain.payload.salvage``).
    """
    job_id = refusal_job_id(bull_job_id)
    if get_job(db, job_id) is None:
        found = salvage(data)
        video = dict(
            id=str(uuid.uuid5(_VIDEO_ID_NAMESPACE, f"refused/{job_id}")),
            name=found.get("input_name") or "(invalid payload)",
            key=found.get("input_key", ""),
            size=0,
            duration=0.0,
            width=0,
            height=0,
            video_codec="",
            audio_codec=None,
            container=REFUSED_CONTAINER,
            submitted_by=found.get("submitted_by", ""),
        )
        config = found["config"].to_payload() if "config" in found else {}
        _insert_job(db, job_id, video, config=config, priority=found.get("priority", 0))
    finish_job(db, job_id, JobStatus.FAILED.value, attempt=attempt, error=error)
    return get_job(db, job_id)


def refusal_job_id(bull_job_id: Any) -> str:
    """The row id for a refused job: its BullMQ id, unless that could not be stored or shown safely
    (a newline, 10 kB): then one derived from it, the same on every node."""
    try:
        return validate_id(bull_job_id)
    except InvalidKeyError:
        digest = hashlib.sha256(str(bull_job_id).encode("utf-8", "surrogatepass")).hexdigest()
        return f"refused-{digest[:32]}"


def _insert_job(
    db: Database,
    job_id: str,
    video: dict[str, Any],
    *,
    config: dict[str, Any],
    priority: int,
    created_at: datetime | None = None,
) -> Job:
    now = utcnow()
    job_row = dict(
        id=job_id,
        video_id=video["id"],
        config=config,
        status=JobStatus.QUEUED.value,
        progress=0.0,
        priority=priority,
        attempts=0,
        outputs=[],
        created_at=created_at or now,
        updated_at=now,
    )
    with db.session() as session:
        _insert_if_absent(session, Video, {**video, "created_at": now})
        _insert_if_absent(session, Job, job_row)
    job = get_job(db, job_id)
    if job is None:  # inserted just now, or by someone else first: it must be there
        raise RuntimeError(f"job {job_id} vanished while it was being recorded")
    return job


# -- reading ---------------------------------------------------------------------------------


def get_job(db: Database, job_id: str) -> Job | None:
    """The job, its ``video`` loaded, or None."""
    with db.session(read_only=True) as session:
        return session.get(Job, job_id)


def get_job_with_video(db: Database, job_id: str) -> tuple[Job, Video] | None:
    """``(job, video)``, ready for ``to_job(*found)``, or None."""
    job = get_job(db, job_id)
    return None if job is None else (job, job.video)


def get_video(db: Database, video_id: str) -> Video | None:
    with db.session(read_only=True) as session:
        return session.get(Video, video_id)


def list_jobs(
    db: Database,
    status: str | Collection[str] | None = None,
    text: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    newest_first: bool = True,
    order_by: str = "created_at",
    descending: bool | None = None,
) -> list[tuple[Job, Video]]:
    """One page of ``(job, video)`` pairs, newest first unless told otherwise.

    ``status`` is one status or several; ``text`` matches part of the video's name or the
    job id, ignoring case; ``since <= created_at < until``. ``order_by`` is one of
    ``ORDER_FIELDS`` (``descending`` defaults to ``newest_first``); ties are broken by age and
    id in the same direction, so pages never overlap. ``farm.domain.job.order_key`` sorts job JSON the
    same way.
    """
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    descending = newest_first if descending is None else descending
    columns = _order_columns(order_by, db.engine.dialect.name)
    order = [column.desc() if descending else column.asc() for column in columns]
    query = (
        _filtered(sa.select(Job).join(Job.video), status, text, since, until)
        .options(contains_eager(Job.video))
        .order_by(*order)
        .limit(limit)
        .offset(offset)
    )
    with db.session(read_only=True) as session:
        return [(job, job.video) for job in session.scalars(query)]


def count_jobs(
    db: Database,
    status: str | Collection[str] | None = None,
    text: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many jobs ``list_jobs`` would page through with the same filters."""
    query = _filtered(sa.select(sa.func.count()).select_from(Job).join(Job.video), status, text, since, until)
    with db.session(read_only=True) as session:
        return session.scalar(query) or 0


def count_by_status(db: Database) -> dict[str, int]:
    """Every status with its number of jobs (0 included)."""
    query = sa.select(Job.status, sa.func.count()).group_by(Job.status)
    with db.session(read_only=True) as session:
        counts = {status: count for status, count in session.execute(query).tuples()}
    return {status: counts.get(status, 0) for status in STATUSES}


def finished_since(db: Database, since: datetime) -> dict[str, int]:
    """Jobs that finished at or after ``since``, by final status (0 included)."""
    query = (
        sa.select(Job.status, sa.func.count())
        .where(Job.finished_at >= since, Job.status.in_(ENDED_STATUSES))
        .group_by(Job.status)
    )
    with db.session(read_only=True) as session:
        counts = {status: count for status, count in session.execute(query).tuples()}
    return {status: counts.get(status, 0) for status in STATUSES if status in ENDED_STATUSES}


# -- state changes ---------------------------------------------------------------------------


def mark_active(db: Database, job_id: str, node: str, attempt: int) -> bool:
    """A node starts a run. False if the job is settled (or unknown): the node must not run it.

    ``started_at`` is the start of the latest run; ``queue_wait_seconds`` is only set by the
    first one.
    """
    now = utcnow()
    with db.session() as session:
        created_at = session.scalar(sa.select(Job.created_at).where(Job.id == job_id))
        if created_at is None:
            return False
        wait = max(0.0, (now - created_at).total_seconds())
        return update_where(
            session,
            job_id,
            Job.status.not_in(FINAL_STATUSES),
            status=JobStatus.ACTIVE.value,
            node=node,
            attempts=attempt,
            progress=0.0,
            error=None,
            finished_at=None,
            started_at=now,
            queue_wait_seconds=sa.func.coalesce(Job.queue_wait_seconds, wait),
        )


def update_progress(db: Database, job_id: str, progress: float, node: str | None = None) -> bool:
    """Move an active job's bar. With ``node``, only the run on that node may move it."""
    conditions = [Job.status == JobStatus.ACTIVE.value]
    if node is not None:
        conditions.append(Job.node == node)
    with db.session() as session:
        return update_where(session, job_id, *conditions, progress=_percent(progress))


def finish_job(
    db: Database,
    job_id: str,
    status: str,
    *,
    attempt: int,
    outputs: list[dict[str, Any]] | None = None,
    error: str | None = None,
    log_tail: str | None = None,
    node: str | None = None,
) -> bool:
    """Settle a run's result, unless the job is already completed or cancelled.

    Returns whether this call won. A run that lost must discard what it made: another run's
    result (or the user's cancel) stands. ``node``: the node that made the result; the row names
    it (another run may have marked the row active on its node since this run started).
    """
    if status not in ENDED_STATUSES:
        raise ValueError(f"a job finishes as one of {', '.join(sorted(ENDED_STATUSES))}, not {status!r}")
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error": error_text(error),
        # A late run of an older attempt must not make the count go backwards.
        "attempts": sa.case((Job.attempts < attempt, attempt), else_=Job.attempts),
    }
    if status == JobStatus.COMPLETED:
        values["progress"] = 100.0
    if outputs is not None:
        values["outputs"] = [dict(output) for output in outputs]
    if log_tail is not None:
        values["log_tail"] = _log_text(log_tail[-LOG_TAIL_MAX_CHARS:])
    if node is not None:
        values["node"] = node
    with db.session() as session:
        return update_where(session, job_id, Job.status.not_in(FINAL_STATUSES), **values)


def requeue(db: Database, job_id: str, note: str | None = None) -> bool:
    """Put a job back in line: a retry of a failed or cancelled job, or a run a node hands back.

    Attempts are kept; ``note`` (why, e.g. "handed back by node x") replaces the error. False if
    the job is completed (or unknown).
    """
    with db.session() as session:
        return update_where(
            session,
            job_id,
            Job.status != JobStatus.COMPLETED.value,
            status=JobStatus.QUEUED.value,
            progress=0.0,
            error=error_text(note),
            finished_at=None,
            node=None,
        )


def note_retry(db: Database, job_id: str, message: str) -> bool:
    """A run failed and the queue will try again: the job waits, with ``message`` as its error."""
    with db.session() as session:
        return update_where(
            session,
            job_id,
            Job.status.not_in(FINAL_STATUSES),
            status=JobStatus.QUEUED.value,
            progress=0.0,
            error=error_text(message),
            finished_at=None,
        )


def mark_cancelled(db: Database, job_id: str, reason: str) -> bool:
    """Cancel a job that is not settled yet; ``reason`` becomes its error. False otherwise."""
    with db.session() as session:
        return update_where(
            session,
            job_id,
            Job.status.not_in(FINAL_STATUSES),
            status=JobStatus.CANCELLED.value,
            error=error_text(reason),
            finished_at=utcnow(),
        )


# -- the job as its readers see it ----------------------------------------------------------------


def to_job(job: Job, video: Video | None = None) -> JobView:
    """The row (and its video: ``video``, else the one loaded with it) as a ``farm.domain.job.Job``."""
    return JobView(
        id=job.id,
        status=job.status,
        progress=job.progress,
        attempts=job.attempts,
        node=job.node,
        error=job.error,
        config=job.config,
        priority=job.priority,
        video=to_video(video if video is not None else job.video),
        outputs=tuple(job.outputs or ()),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        queue_wait_seconds=job.queue_wait_seconds,
        log_tail=job.log_tail,
    )


def to_video(video: Video) -> JobVideo:
    return JobVideo(
        id=video.id,
        name=video.name,
        key=video.key,
        size=video.size,
        duration=video.duration,
        width=video.width,
        height=video.height,
        video_codec=video.video_codec,
        audio_codec=video.audio_codec,
        container=video.container,
        submitted_by=video.submitted_by,
        created_at=video.created_at,
    )


# -- helpers -------------------------------------------------------------------------------------


def update_where(session: Session, job_id: str, *conditions: Any, **values: Any) -> bool:
    """One conditional UPDATE of a job (``updated_at`` set to now); True if it changed the row, False
    if the row did not meet ``conditions`` (someone else changed it first)."""
    statement = (
        sa.update(Job)
        .where(Job.id == job_id, *conditions)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return cast("sa.CursorResult[Any]", session.execute(statement)).rowcount == 1


def _insert_if_absent(session: Session, model: type[Video] | type[Job], values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        session.execute(module.insert(model).values(**values).on_conflict_do_nothing(index_elements=["id"]))
        return
    try:
        with session.begin_nested():
            session.execute(sa.insert(model).values(**values))
    except sa.exc.IntegrityError:
        pass  # another caller inserted it first


def _filtered(
    query: sa.Select[Any],
    status: str | Collection[str] | None,
    text: str | None,
    since: datetime | None,
    until: datetime | None,
) -> sa.Select[Any]:
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        unknown = set(wanted) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {', '.join(sorted(unknown))}; choose from {', '.join(STATUSES)}")
        query = query.where(Job.status.in_(wanted))
    if text:
        query = query.where(
            sa.or_(Video.name.icontains(text, autoescape=True), Job.id.icontains(text, autoescape=True))
        )
    if since is not None:
        query = query.where(Job.created_at >= since)
    if until is not None:
        query = query.where(Job.created_at < until)
    return query


def _order_columns(order_by: str, dialect: str) -> list[Any]:
    """The ORDER BY columns for ``list_jobs``, all to be sorted in one direction."""
    if order_by not in ORDER_FIELDS:
        raise ValueError(f"cannot sort jobs by {order_by!r}; choose from {', '.join(ORDER_FIELDS)}")
    tie_break = [Job.created_at, Job.id]
    if order_by == "name":
        name = sa.func.lower(Video.name)
        # Code-point order on both backends (and in ``order_key``), whatever the server's locale.
        return [name.collate("C") if dialect == "postgresql" else name, *tie_break]
    if order_by == "status":  # the job's life order, not the alphabet
        rank = sa.case({status: i for i, status in enumerate(STATUSES)}, value=Job.status, else_=len(STATUSES))
        return [rank, *tie_break]
    if order_by == "progress":
        return [Job.progress, *tie_break]
    if order_by == "finished_at":
        # Unfinished jobs sort after finished ones (before them, descending) on every backend.
        unfinished = sa.case((Job.finished_at.is_(None), 1), else_=0)
        return [unfinished, Job.finished_at, *tie_break]
    return tie_break


def error_text(error: str | None) -> str | None:
    """A job's error as it is stored: ``ERROR_MAX_CHARS`` at most, control characters escaped but
    its line breaks (whoever shows it on one line escapes those)."""
    return None if error is None else cut(_log_text(error), ERROR_MAX_CHARS)


def _log_text(text: str) -> str:
    """``text`` keeping its lines, with any other control character (an escape sequence that a
    file's metadata smuggled into FFmpeg's log, say) written escaped."""
    return "\n".join(printable(line.rstrip("\r")) for line in text.split("\n"))


def _percent(progress: float) -> float:
    progress = float(progress)
    if math.isnan(progress):
        raise ValueError("progress is not a number")
    return min(100.0, max(0.0, progress))
