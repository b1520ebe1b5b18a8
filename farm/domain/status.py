"""A job's status, as its row records it, and the groups of statuses the farm asks about.

``queued`` -> ``active`` -> ``completed`` | ``failed`` | ``cancelled``; a failed or cancelled job
may be retried (back to ``queued``), a node that stops responding hands its job back to
``queued``. The values are stored in the database (a check constraint lists them) and shown by
the CLI and the panel.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Every status, in the order jobs are listed and counted by status.
STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus)
# Still on its way: waiting for a node or running on one.
OPEN_STATUSES = frozenset({JobStatus.QUEUED.value, JobStatus.ACTIVE.value})
# The run is over, one way or another: a wait for the job ends, a result is counted.
ENDED_STATUSES = frozenset({JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value})
# Settled for good: no run may change the row any more (a user's retry still may). A failed job is
# not among them, because it may be retried (its next attempt is a run too).
FINAL_STATUSES = frozenset({JobStatus.COMPLETED.value, JobStatus.CANCELLED.value})
# What a retry puts back in the queue.
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED.value, JobStatus.CANCELLED.value})
