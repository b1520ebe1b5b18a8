"""The storage interface every backend implements, and the errors it raises.

Keys are relative ``a/b/c`` paths (see ``farm.domain.object_keys``); a backend maps them under its own root (a
folder, or a bucket and prefix). Transfers are blocking and meant to run in a thread (a node's
event loop and the panel's GUI thread must never wait on them); they take an optional progress
callback and an optional ``threading.Event`` that cancels them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from farm.base.errors import FarmError

ProgressCallback = Callable[[int], None]
"""Called with the bytes transferred so far (cumulative, never decreasing), ending at the size.

It may be called from a transfer's worker threads, one call at a time; keep it quick.
"""

# Objects whose last part starts with this are the backends' own (temp files, probes): never listed.
INTERNAL_PREFIX = ".encodeflow-"


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the storage root, e.g. "inputs/<video id>/clip.mp4"
    size: int
    modified: datetime  # timezone-aware, UTC


class StorageError(FarmError, RuntimeError):
    """A storage operation failed; the message says what failed and what to do. Never holds secrets."""


class TransferCancelled(StorageError):
    """A transfer stopped because its cancel event was set; nothing was left under the key."""


class ObjectNotFound(StorageError):
    """The key names no object (a download or a read of something that is not there)."""


class Storage(ABC):
    """Objects under one root: an S3 bucket and prefix, or a folder."""

    url: str  # the configured URL, without secrets

    @abstractmethod
    def upload_file(
        self,
        path: Path,
        key: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Store the file at ``path`` under ``key`` and return its size.

        Atomic: a reader sees the old object or the whole new one, never a part. If ``cancel`` is
        set before the object is committed, raises ``TransferCancelled`` and leaves nothing new.
        """

    @abstractmethod
    def download_file(
        self,
        key: str,
        dest: Path,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Write the object to ``dest`` (via a temp file and a rename) and return its size."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or ``None`` if there is no such object."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object under the folder-like ``prefix`` (``"outputs/<job id>"``), recursively.

        ``prefix`` is matched by whole parts: ``"outputs/a"`` does not list ``"outputs/ab/x"``.
        ``""`` lists everything. Keys are relative to the storage root.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (by whole parts, as ``list``); return how many.

        An empty prefix is refused, so a slip never empties the whole storage.
        """

    @abstractmethod
    def presigned_url(self, key: str, expires: int = 3600) -> str:
        """A URL that reads the object without credentials (S3: presigned GET; folder: file://)."""

    @abstractmethod
    def check(self) -> None:
        """Raise ``StorageError`` with the exact reason if this storage cannot be used now."""

    def sweep_leftovers(self) -> int:
        """Remove what transfers cut short by a crash left behind; return how many. Never raises.

        Nodes call it when they start. Only leftovers that no live transfer can still own go.
        """
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class ProgressTracker:
    """Turns increments from any number of threads into cumulative, monotonic progress.

    Retries can report negative increments (a part is sent again); the callback still only ever
    sees a new highest total. ``add`` raises ``TransferCancelled`` once ``cancel`` is set, which
    stops the transfer from inside its data path.
    """

    def __init__(self, progress: ProgressCallback | None, cancel: threading.Event | None, what: str):
        self._progress = progress
        self._cancel = cancel
        self.what = what  # "upload of 'k' to s3://b/p", for the cancellation message
        self._lock = threading.Lock()
        self._total = 0
        self._reported = -1  # so that even an empty file reports its size, 0, once

    def add(self, amount: int) -> None:
        self.raise_if_cancelled()
        with self._lock:
            self._total += amount
            if self._total > self._reported:
                self._report(self._total)

    @property
    def cancel_event(self) -> threading.Event | None:
        return self._cancel

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TransferCancelled(f"{self.what} cancelled")

    def restart(self) -> None:
        """A transfer starts again from its first byte (a retry): count afresh, report no rewind."""
        with self._lock:
            self._total = 0

    def finish(self, size: int) -> None:
        """Report the final size if the increments have not (an empty file, say)."""
        with self._lock:
            if self._reported < size:
                self._report(size)

    def _report(self, total: int) -> None:
        self._reported = total
        if self._progress is not None:
            self._progress(total)
