"""The farm's tables: one ``Video`` per uploaded input, one ``Job`` per rendition request.

The same models run on SQLite (one machine) and PostgreSQL (a farm of several), so only portable
types are used. Ids are string UUIDs made in Python, so a caller knows a video's id before the
row exists (the input is uploaded under ``inputs/<video id>/<name>`` first). Timestamps are always
timezone-aware UTC, whatever the backend hands back.

The schema itself is created by the Alembic migrations in ``farm/services/db/migrations``; these classes
must describe the same tables (a test compares them).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from farm.domain.object_keys import MAX_ID_CHARS
from farm.domain.payload import MAX_NAME_CHARS, MAX_SUBMITTED_BY_CHARS
from farm.domain.status import JobStatus

# Deterministic constraint names, so later migrations can refer to them (and SQLite batch mode works).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Our ids are UUIDs; other producers' ids follow the same rules (farm.domain.object_keys.validate_id). The text
# limits are the queue payload's (farm.domain.payload), so whatever a node accepts fits its column.
ID_LENGTH = MAX_ID_CHARS


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC datetime on every backend.

    SQLite has no time zones: values are stored as UTC text and read back naive, so UTC is put
    back on. PostgreSQL's ``timestamptz`` comes back in the session's time zone, so it is
    converted. Naive datetimes are refused rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one (e.g. UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS))  # the original file name
    key: Mapped[str] = mapped_column(sa.String(1024))  # storage key of the input
    size: Mapped[int] = mapped_column(sa.BigInteger)
    duration: Mapped[float] = mapped_column(sa.Float)  # seconds
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    video_codec: Mapped[str] = mapped_column(sa.String(64))
    audio_codec: Mapped[str | None] = mapped_column(sa.String(64))
    container: Mapped[str] = mapped_column(sa.String(255))  # demuxer name(s), e.g. "matroska,webm"
    submitted_by: Mapped[str] = mapped_column(sa.String(MAX_SUBMITTED_BY_CHARS), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Video {self.id} {self.name!r}>"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The paged jobs list filters by status and sorts by age; the leading status column also
        # serves plain status lookups, so status needs no index of its own.
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
        sa.CheckConstraint("status IN ('queued', 'active', 'completed', 'failed', 'cancelled')", name="status_known"),
    )

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    video_id: Mapped[str] = mapped_column(sa.ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the outputConfig payload
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(sa.Float, default=0.0)  # 0-100
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    node: Mapped[str | None] = mapped_column(sa.String(255))
    error: Mapped[str | None] = mapped_column(sa.Text)
    log_tail: Mapped[str | None] = mapped_column(sa.Text)  # the end of FFmpeg's log
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()  # start of the latest run
    finished_at: Mapped[datetime | None] = mapped_column()
    queue_wait_seconds: Mapped[float | None] = mapped_column(sa.Float)  # created -> first start
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Every job is shown with its video, so load it in the same query.
    video: Mapped[Video] = relationship(lazy="joined", innerjoin=True)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status} {self.progress:.0f}%>"
