"""A node's work dir: made (or adopted empty) by the node, marked and locked as its own, and swept
of only what the node made.

The node writes a job's input and output in a folder per run (``<job id>-<attempt>``, see
``job_dir_name``) inside its work dir and removes it when the run ends; a node killed outright
leaves it, and the next start sweeps it. A sweep is a deletion, so it is fenced three ways:

- **Ownership.** A work dir is the node's when it holds the node's marker file (``MARKER``). The
  node writes the marker into a folder it creates, or into an existing empty one (systemd's
  ``CacheDirectory`` creates the unit's work dir empty). An existing folder with other things in it
  and no marker is somebody's folder: the node refuses to start (exit 2) rather than risk it. The
  one exception is a folder holding nothing but run folders as a node makes them (named
  ``<job id>-<attempt>``, holding only ``input*``, ``output*`` and transfer temp files): the work
  dir of a node of a version without markers, which a crash left behind.
- **Recognition.** In its own work dir a sweep removes only run folders as the node makes them
  (the same test as above); anything else (a file an admin put there, a symlink, a folder with
  other things in it) is left and named in one warning.
- **Exclusion.** The node holds an exclusive lock on the marker while it runs (released by the
  operating system when the process dies, however it dies), so two nodes never share a work dir:
  the second one is refused, naming the first one's pid, and never sweeps the first one's runs or
  kills its FFmpeg.

An FFmpeg left working in the work dir by a dead run of the node (FFmpeg runs in its own process
group, so a node killed outright can leave it behind where its parent-death signal is missing) is
killed at start, but only when no live node is among its ancestors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import psutil

from farm.base.settings import SettingsError
from farm.base.untrusted import shown
from farm.domain.object_keys import sanitize_name
from farm.services.registry import is_node_process

log = logging.getLogger(__name__)

MARKER = ".encodeflow-node"
_RUN_DIR = re.compile(r".+-[0-9]+")  # what job_dir_name makes
_RUN_FILE = re.compile(r"(input|output)(\.[^.]+)?|\.encodeflow-tmp-.+")  # what a run writes in it
_LOCK_OFFSET = 1 << 30  # Windows locks a byte range: one past any marker's text, which stays readable
SHOWN_ENTRIES = 5


class WorkDirError(SettingsError):
    """The work dir cannot be used by this node; the message says why and what to do."""


def job_dir_name(job_id: str, attempt: int) -> str:
    """The folder of one run of a job in the work dir: the only thing a sweep deletes."""
    return f"{sanitize_name(job_id)}-{int(attempt)}"


def entries(path: Path) -> list[Path]:
    """What a work dir holds besides its marker, sorted (empty for a missing folder)."""
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if child.name != MARKER)


class WorkDir:
    """A work dir held by this process. Build with ``WorkDir.claim``; ``release()`` at exit."""

    def __init__(self, path: Path, node: str, lock_fd: int | None):
        self.path = path
        self.node = node
        self._lock_fd = lock_fd
        self._warned: set[str] = set()

    @classmethod
    def claim(cls, path: Path, node: str) -> WorkDir:
        """Create or adopt ``path`` for node ``node`` and lock it, or raise ``WorkDirError``."""
        _make(path)
        marker = path / MARKER
        if not marker.exists() and not all(_left_by_a_node(p) for p in entries(path)):
            names = ", ".join(shown(p.name) for p in entries(path)[:SHOWN_ENTRIES])
            raise WorkDirError(
                f"work dir {path} is not empty (it holds {names}) and was not made by farm-node; a node "
                "deletes what is in its work dir, so give --work-dir a new or empty folder"
            )
        fd = _open_marker(marker)
        try:
            if not _lock(fd, marker):
                holder = _read_marker(fd)
                raise WorkDirError(
                    f"work dir {path} is in use by node {holder.get('node', '?')} "
                    f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}); give each "
                    "node its own --work-dir"
                )
            _write_marker(fd, {"node": node, "host": socket.gethostname(), "pid": os.getpid()})
        except BaseException:
            os.close(fd)
            raise
        return cls(path, node, fd)

    def release(self) -> None:
        """Unlock the work dir (the marker stays: the folder is still this node's)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- cleaning up after a dead run -------------------------------------------------------------
    def sweep(self) -> None:
        """Remove the run folders an earlier run (or crash) left; leave and name everything else."""
        foreign = []
        for child in entries(self.path):
            if _left_by_a_node(child):
                shutil.rmtree(child, ignore_errors=True)
            else:
                foreign.append(child.name)
        new = [name for name in foreign if name not in self._warned]
        if new:
            self._warned.update(new)
            log.warning(
                "work dir %s holds %d thing(s) farm-node did not make, left as they are: %s",
                self.path,
                len(foreign),
                ", ".join(shown(n) for n in foreign[:SHOWN_ENTRIES]),
            )

    def stop_orphans(self) -> list[int]:
        """Kill FFmpeg processes that work in this work dir and have no live node above them.

        Only a dead run of a node on this work dir can have left one (the lock keeps any other
        node out); one with a live node among its ancestors is that node's, and is left alone.
        """
        inside = str(self.path) + os.sep
        killed = []
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
                program = os.path.basename(cmdline[0]) if cmdline else (proc.info["name"] or "")
                if proc.pid == os.getpid() or "ffmpeg" not in program.lower():
                    continue
                # Paths reach FFmpeg as "file:<path>" URLs, so look inside each argument.
                if not any(inside in arg for arg in cmdline[1:]):
                    continue
                if any(is_node_process(parent.pid) for parent in proc.parents()):
                    log.warning("FFmpeg pid %d works in %s under a live node; left alone", proc.pid, self.path)
                    continue
                proc.kill()
                killed.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        if killed:
            psutil.wait_procs(killed, timeout=5)
            log.warning(
                "killed %d FFmpeg process(es) left running in %s by an earlier run of this node: pid %s",
                len(killed),
                self.path,
                ", ".join(str(p.pid) for p in killed),
            )
        return [p.pid for p in killed]


def _left_by_a_node(entry: Path) -> bool:
    """Whether ``entry`` is a run folder exactly as a node makes one: named by ``job_dir_name``,
    holding only the files a run writes (a user's ``renders-1/`` holds other things)."""
    if entry.is_symlink() or not entry.is_dir() or not _RUN_DIR.fullmatch(entry.name):
        return False
    return all(f.is_file() and not f.is_symlink() and _RUN_FILE.fullmatch(f.name) for f in entry.iterdir())


def _make(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise WorkDirError(f"work dir {path} is a file, not a folder; give --work-dir a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkDirError(
            f"cannot create work dir {path}: {exc.strerror or exc}; give --work-dir a folder this user can write to"
        ) from None


def _open_marker(marker: Path) -> int:
    try:
        # Never through a symlink: a planted one would have the node truncate the file it points at.
        return os.open(marker, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise WorkDirError(
            f"cannot write in work dir {marker.parent}: {exc.strerror or exc}; "
            "give --work-dir a folder this user can write to"
        ) from None


def _lock(fd: int, marker: Path) -> bool:
    """Take the work dir's lock without waiting: False if another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        # Some network file systems cannot lock at all; the node-name claim still keeps a second
        # node of the same name out.
        log.warning("cannot lock work dir %s (%s); make sure no other node uses it", marker.parent, exc.strerror or exc)
        return True


def _read_marker(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096))
        if isinstance(data, dict):
            return data
    return {}


def _write_marker(fd: int, data: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(data).encode() + b"\n")
