"""A job as its readers see it: one frozen value read from the database, and its JSON.

``Job.to_json()`` is the job's public form: what ``encodeflow show --json`` and ``encodeflow jobs
--json`` print, what scripts parse, and the rows of the panel's jobs table. Timestamps are kept as
moments here and written in JSON the way JavaScript's ``toISOString`` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from farm.domain.status import STATUSES

# What a page of jobs can be sorted by (the panel's sortable columns).
ORDER_FIELDS = ("created_at", "name", "status", "progress", "finished_at")


def isoformat(moment: datetime | None) -> str | None:
    """``2024-05-01T12:00:00.123Z``, the form JavaScript's ``toISOString`` gives."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True)
class JobVideo:
    """The input a job transcodes, as recorded when it was uploaded (or probed by a node)."""

    id: str
    name: str
    key: str
    size: int
    duration: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    container: str
    submitted_by: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "key": self.key,
            "size": self.size,
            "duration": self.duration,
            "width": self.width,
            "height": self.height,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "container": self.container,
            "submitted_by": self.submitted_by,
            "created_at": isoformat(self.created_at),
        }


@dataclass(frozen=True)
class JobOutput:
    """Where a job's result is stored (its storage key) and how many bytes it has."""

    key: str | None
    size: int | None


@dataclass(frozen=True)
class Job:
    """One job: its state, its output config, its input and what it made."""

    id: str
    status: str
    progress: float
    attempts: int
    node: str | None
    error: str | None
    config: Mapping[str, Any]  # the queue payload's outputConfig
    priority: int
    video: JobVideo  # the input
    outputs: tuple[Mapping[str, Any], ...]  # every output, the primary one first
    created_at: datetime
    started_at: datetime | None  # the start of the latest run
    finished_at: datetime | None
    updated_at: datetime
    queue_wait_seconds: float | None
    log_tail: str | None

    @property
    def output(self) -> JobOutput | None:
        """The primary output (what ``encodeflow download`` fetches), or None before there is one."""
        if not self.outputs:
            return None
        first = self.outputs[0]
        return JobOutput(first.get("key"), first.get("size"))

    def to_json(self, *, log_tail: bool = True) -> dict[str, Any]:
        """The job's public JSON; without ``log_tail``, the (up to 16 kB) FFmpeg log tail is left out."""
        output = self.output
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "progress": self.progress,
            "attempts": self.attempts,
            "node": self.node,
            "error": self.error,
            "config": dict(self.config),
            "priority": self.priority,
            "video": self.video.to_json(),
            "output": {"key": output.key, "size": output.size} if output is not None else None,
            "outputs": [dict(item) for item in self.outputs],
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "updated_at": isoformat(self.updated_at),
            "queue_wait_seconds": self.queue_wait_seconds,
        }
        if log_tail:
            data["log_tail"] = self.log_tail
        return data


def order_key(order_by: str = "created_at") -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A ``sorted`` key for job JSON (``Job.to_json()``) that matches the database's order for
    ``order_by`` ascending (use ``reverse=True`` for descending), so a client can place one changed
    job among a page it holds."""
    if order_by not in ORDER_FIELDS:
        raise ValueError(f"cannot sort jobs by {order_by!r}; choose from {', '.join(ORDER_FIELDS)}")

    def key(job: Mapping[str, Any]) -> tuple[Any, ...]:
        primary: tuple[Any, ...]
        if order_by == "name":
            primary = ((job.get("video") or {}).get("name", "").lower(),)
        elif order_by == "status":
            primary = (status_rank(job["status"]),)
        elif order_by == "progress":
            primary = (float(job.get("progress") or 0.0),)
        elif order_by == "finished_at":
            primary = (job.get("finished_at") is None, job.get("finished_at") or "")
        else:
            primary = ()
        # ISO strings from ``isoformat`` all have one form, so they compare as the moments do.
        return (*primary, job["created_at"] or "", job["id"])

    return key


def status_rank(status: str) -> int:
    """A status's place in a job's life (queued first), the order the status column sorts by."""
    return STATUSES.index(status) if status in STATUSES else len(STATUSES)
