"""Files for tests: random bytes for storage tests, written a MiB at a time (never all in memory),
and the run's shared temporary folder, for what is made once and used by every pytest-xdist worker."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MiB = 1024 * 1024


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(os.urandom(min(MiB, left)))
            left -= MiB
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def run_folder(tmp_path_factory) -> Path:
    """The temporary folder of the whole run: under pytest-xdist each worker's is inside it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def alone_or_together(folder: Path, *, alone: bool) -> Iterator[None]:
    """Tests run together, except that one which must run ``alone`` waits until the others still
    running have ended and starts no other until it has: a readers-writer lock over flock. A test
    holds ``tests.rw`` shared, an ``alone`` test exclusive; the ``tests.turn`` lock, taken by each in
    turn before it queues for ``tests.rw``, stops new tests from starting while an ``alone`` test
    waits, so that it cannot be starved."""
    with open(folder / "tests.turn", "a") as turn, open(folder / "tests.rw", "a") as rw:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(rw, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(rw, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)


@contextmanager
def one_at_a_time(lock: Path) -> Iterator[None]:
    """Held by one process at a time (an exclusive flock on ``lock``): the first worker to need a
    shared thing makes it, the others wait for it and then find it made."""
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
