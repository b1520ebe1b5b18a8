"""The ways a job's run ends early (see ``JobProcessor.__call__`` for what each means for the job).

Some are control flow, not errors a user reads (``JobCancelled``, ``AlreadyCompleted``,
``LockLost``); the others carry the one line the job's row shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bullmq import UnrecoverableError

from farm.base.errors import FarmError
from farm.services.storage import StorageError


class JobCancelled(Exception):
    """The user cancelled the job, or (``RunningJob.hand_back``) a cold stop gives it back to the queue."""


class AlreadyCompleted(Exception):
    """Another run completed the row; this run completes the queue's job with the row's result."""

    def __init__(self, outputs: list[dict[str, Any]], node: str | None):
        super().__init__("already completed")
        self.outputs = outputs
        self.node = node


class LockLost(Exception):
    """Another run holds the job's lock now (this node was frozen or cut off past the lock): the
    job, its row and its queue entry are that run's; this run only cleans up after itself."""


class DatabaseUnreachable(FarmError, RuntimeError):
    """The database did not answer within the run's retry budget: the job goes back to the queue."""


class DatabaseRefused(FarmError, RuntimeError):
    """The database refused a statement (not an outage): the job is retried; the message is generic,
    since the driver's text holds SQL and values, and the node's log has it."""


class StorageFull(StorageError):
    """The storage the output goes to has no room (a full NAS share). Every node would meet the
    same, so the job is not handed back as if this node's work dir were full: it is retried with
    backoff, and fails with this reason once its attempts are spent."""


class WorkDirFull(FarmError, RuntimeError):
    """The node's work dir has no room for the job (``needed`` bytes, about): the node's problem, not
    the job's, so it goes back to the queue while another node may have room (farm_node/disk_guard.py)."""

    def __init__(self, node: str, work_dir: Path, needed: int, free: int):
        super().__init__(
            f"node {node} ran out of disk space in its work dir {work_dir} ({free / 1e6:.1f} MB "
            f"free, the job needs about {needed / 1e6:.1f} MB); free some space there or give the "
            "node another --work-dir"
        )
        self.needed = needed


# bullmq ships no type hints, so to mypy its error classes are Any.
class FFmpegFailed(UnrecoverableError):  # type: ignore[misc]
    """FFmpeg refused the job in a way another try would not fix (BullMQ fails the job at once);
    ``log_tail`` is FFmpeg's last lines, for the job's log."""

    def __init__(self, reason: str, *, log_tail: str = "") -> None:
        super().__init__(reason)
        self.log_tail = log_tail
