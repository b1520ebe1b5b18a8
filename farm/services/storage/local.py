"""Storage in a plain folder: the local disk of a one-machine farm, or a NAS mount shared by nodes.

Writes go to a temp file in the target's own folder, are flushed to disk, then renamed over the
target (``os.replace`` is atomic within one file system), so a node reading an object never sees
half of it, even while another node is still writing it.

A writer killed mid-copy (SIGKILL, a power cut) leaves its temp file behind. Temp files are named
``.encodeflow-tmp-<random>-<pid>-<host>``, so ``sweep_leftovers`` (run by every node as it starts)
can tell that one is dead: its host is this one and its process is gone, or it is older than a day
(the writer was on another host). Listings never show them.

The root may be a folder that holds other things too (``file:///home/me``), so nothing here deletes
what it did not write: a sweep removes only names of that form, and ``delete`` removes the object's
file and the folders that it left empty below the key's first folder (``outputs/``, ``inputs/``).

A NAS that does not answer (EIO, ESTALE, a share that went away so the root is missing) is retried
with backoff under ``RetryPolicy``, then reported as ``StorageUnavailable``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import BinaryIO, TypeVar

import psutil

from farm.domain.object_keys import InvalidKeyError, normalize_prefix, split_key
from farm.services.storage.base import (
    INTERNAL_PREFIX,
    ObjectNotFound,
    ProgressCallback,
    ProgressTracker,
    Storage,
    StorageError,
    StoredObject,
)
from farm.services.storage.retry import RetryPolicy, StorageUnavailable, unavailable_message

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_SIZE = 1024 * 1024  # small enough for smooth progress and a prompt cancel
TEMP_PREFIX = f"{INTERNAL_PREFIX}tmp-"
PROBE_PREFIX = f"{INTERNAL_PREFIX}check-"
STALE_TEMP_SECONDS = 24 * 3600  # a temp file this old has no live writer, whatever host it names
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_PREFIX)}[0-9a-f]{{32}}-(?P<pid>\d+)-(?P<host>.+)")
_PROBE_NAME = re.compile(rf"{re.escape(PROBE_PREFIX)}[0-9a-f]{{32}}")
# What a NAS (NFS, SMB) answers while it is away or failing over: worth waiting for.
_NAS_ERRNOS = {
    errno.EIO,
    errno.ESTALE,
    errno.ENOTCONN,
    errno.ETIMEDOUT,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.ECONNABORTED,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
}


class LocalStorage(Storage):
    """Objects as files under ``root``; a key's parts are the folders and the file name.

    The root is created on the first write or ``check()``, not here, so a missing NAS mount is
    reported by ``check()`` instead of failing the program's start.
    """

    def __init__(self, root: Path, policy: RetryPolicy | None = None):
        root = Path(root)
        if not root.is_absolute():
            raise StorageError(f"the storage folder must be an absolute path, got {str(root)!r}")
        self.root = Path(os.path.normpath(root))
        self.url = self.root.as_uri()
        self.policy = policy or RetryPolicy()
        # A root that was there and is gone is a share that went away (wait for it); one never seen
        # is a storage not used yet (its objects are simply not there).
        self._root_seen = False

    # -- transfers ---------------------------------------------------------------------------
    def upload_file(
        self,
        path: Path,
        key: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        target = self._path(key)
        tracker = ProgressTracker(progress, cancel, f"upload of {key!r} to {self.url}")

        def attempt() -> int:
            with open(path, "rb") as source:
                self._require_root()
                target.parent.mkdir(parents=True, exist_ok=True)
                self._root_seen = True
                return _copy_atomically(source, target, tracker)

        action = f"upload {path} to {key!r}"
        with _os_errors(f"{action} in {self.root}"):
            return self._retrying(attempt, action, cancel)

    def download_file(
        self,
        key: str,
        dest: Path,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        source_path = self._path(key)
        dest = Path(dest)
        tracker = ProgressTracker(progress, cancel, f"download of {key!r} from {self.url}")

        def attempt() -> int:
            try:
                source = open(source_path, "rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                self._require_root()  # the share went away, not the object
                raise ObjectNotFound(f"there is no object {key!r} in {self.root}") from None
            self._root_seen = True
            with source:
                dest.parent.mkdir(parents=True, exist_ok=True)
                return _copy_atomically(source, dest, tracker)

        action = f"download {key!r} to {dest}"
        with _os_errors(f"download {key!r} from {self.root} to {dest}"):
            return self._retrying(attempt, action, cancel)

    # -- objects -----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        path = self._path(key)

        def attempt() -> int | None:
            try:
                if path.is_file():
                    return path.stat().st_size
            except FileNotFoundError:
                pass
            self._require_root()
            return None

        action = f"read the size of {key!r}"
        with _os_errors(f"{action} in {self.root}"):
            return self._retrying(attempt, action)

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        prefix = normalize_prefix(prefix)
        top = self._path(prefix) if prefix else self.root
        if not top.is_dir():
            return
        with _os_errors(f"list {prefix or 'the root'} in {self.root}"):
            for folder, dirs, files in os.walk(top):
                dirs.sort()
                relative = Path(folder).relative_to(self.root).parts
                for name in sorted(files):
                    if name.startswith(INTERNAL_PREFIX):
                        continue
                    try:
                        stat = os.stat(os.path.join(folder, name))
                    except FileNotFoundError:  # deleted while we walked
                        continue
                    yield StoredObject(
                        key="/".join((*relative, name)),
                        size=stat.st_size,
                        modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
                    )

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors(f"delete {key!r} in {self.root}"):
            if path.is_dir():
                return  # a folder is not an object
            path.unlink(missing_ok=True)
            self._prune_empty_folders(path.parent, self.root / split_key(key)[0])

    def delete_prefix(self, prefix: str) -> int:
        prefix = normalize_prefix(prefix)
        if not prefix:
            raise InvalidKeyError("refusing to delete every object: give a non-empty prefix")
        count = 0
        for obj in list(self.list(prefix)):
            self.delete(obj.key)
            count += 1
        return count

    def presigned_url(self, key: str, expires: int = 3600) -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StorageError(
                f"storage folder {self.root} is a file, not a folder; remove it or choose another folder"
            ) from None
        except OSError as exc:
            raise StorageError(
                f"cannot create storage folder {self.root}: {_reason(exc)}; "
                "create it (or mount the share) or choose another folder"
            ) from None
        if not self.root.is_dir():
            raise StorageError(f"storage folder {self.root} is not a folder; choose another folder")
        self._root_seen = True
        probe = self.root / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(probe, "xb") as fh:
                fh.write(b"ok")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StorageError(
                f"storage folder {self.root} is not writable: {_reason(exc)}; "
                "fix its permissions or choose another folder"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def sweep_leftovers(self, stale_after: float = STALE_TEMP_SECONDS) -> int:
        """Remove temp files whose writer is dead: on this host with its process gone, or too old.

        Only names this module writes (``temp_name``, the ``check`` probe) are touched: the root may
        hold other programs' files, or a node's work dir, whose marker also starts with ``.encodeflow-``.
        """
        host, removed = _host_tag(), []
        now = time.time()
        try:
            for folder, _dirs, files in os.walk(self.root):
                for name in files:
                    match = _TEMP_NAME.fullmatch(name)
                    if match is None and not _PROBE_NAME.fullmatch(name):
                        continue
                    path = os.path.join(folder, name)
                    mine_and_dead = (
                        match is not None and match["host"] == host and not psutil.pid_exists(int(match["pid"]))
                    )
                    try:
                        if mine_and_dead or now - os.lstat(path).st_mtime > stale_after:
                            os.unlink(path)
                            removed.append(path)
                    except FileNotFoundError:
                        continue  # its writer renamed it, or another node swept it
        except OSError as exc:
            log.warning("could not sweep temp files in %s: %s", self.root, _reason(exc))
        if removed:
            log.info(
                "removed %d temp file(s) left in %s by interrupted uploads: %s",
                len(removed),
                self.root,
                ", ".join(os.path.relpath(p, self.root) for p in removed[:5]),
            )
        return len(removed)

    # -- helpers -----------------------------------------------------------------------------
    def _require_root(self) -> None:
        """A root that was there and is gone is a share that went away: wait for it, and never
        recreate it on the local disk under the empty mount point (an upload's mkdir would)."""
        if self._root_seen and not self.root.is_dir():
            raise _RootMissing(self.root)

    def _retrying(self, call: Callable[[], T], action: str, cancel: threading.Event | None = None) -> T:
        def unavailable(seconds: float, tries: int, reason: str) -> StorageUnavailable:
            return StorageUnavailable(
                unavailable_message(
                    self.url,
                    action,
                    seconds,
                    tries,
                    reason,
                    "check that the folder (or the network share it is on) is mounted and reachable "
                    "from this machine, then try again",
                )
            )

        return self.policy.run(
            call, transient=_transient_reason, unavailable=unavailable, cancel=cancel, what=f"{action} in {self.root}"
        )

    def _path(self, key: str) -> Path:
        parts = split_key(key)
        for part in parts:
            # On Windows "C:x" or "a:stream" would leave the root or name another stream.
            pure = PurePath(part)
            if pure.drive or pure.root or pure.parts != (part,):
                raise InvalidKeyError(f"storage key {key!r} has a part {part!r} this file system cannot hold")
        return self.root.joinpath(*parts)

    def _prune_empty_folders(self, folder: Path, top: Path) -> None:
        """Remove folders a delete left empty, up to (not including) ``top``, the key's first folder
        (``outputs``, ``inputs``): the root may be a user's folder (``file:///home/me``), where that
        folder and the root itself may have been there before EncodeFlow wrote anything."""
        while folder != top and top in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent


class _RootMissing(OSError):
    def __init__(self, root: Path):
        super().__init__(errno.ENOENT, f"the folder {root} is not there (is the share mounted?)")


def _transient_reason(exc: BaseException) -> str | None:
    if isinstance(exc, _RootMissing):
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno in _NAS_ERRNOS:
        return _reason(exc)
    return None


def _host_tag() -> str:
    """This host's name as it goes into temp file names (file-name safe, bounded)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def temp_name() -> str:
    """A temp file name that says who wrote it, so a sweep can tell whether the writer is alive."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.getpid()}-{_host_tag()}"


def _copy_atomically(source: BinaryIO, target: Path, tracker: ProgressTracker) -> int:
    """Copy ``source`` to a temp file beside ``target``, sync it, then rename it over ``target``."""
    tracker.restart()
    temp = target.parent / temp_name()
    try:
        size = 0
        with open(temp, "xb") as out:
            while chunk := source.read(CHUNK_SIZE):
                tracker.raise_if_cancelled()
                out.write(chunk)
                size += len(chunk)
                tracker.add(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        tracker.raise_if_cancelled()
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _sync_folder(target.parent)
    tracker.finish(size)
    return size


def _sync_folder(folder: Path) -> None:
    """Make the rename durable; not every platform or file system can open a folder for this."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextlib.contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Turn a file system error into a ``StorageError`` that says what failed and why."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot {action}: {_reason(exc)}") from exc
