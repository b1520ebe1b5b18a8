"""Runs one FFmpeg command without blocking the event loop, reporting progress and stopping on demand.

A blocked loop stops BullMQ's lock renewal and another node would run the same job again, so the
process is driven with ``asyncio.create_subprocess_exec``. FFmpeg starts in its own process group
(``start_new_session``) so that a cancel kills it whole: SIGTERM, then SIGKILL after a short grace.
Being in its own group, it would outlive a node killed with SIGKILL; ``farm.base.child_guard`` ties it
to the node so that it dies with it.

A progress watchdog stops an FFmpeg that makes no progress for ``progress_timeout`` seconds (a
stopped process, a hung read of its input, an encoder stuck in a loop): progress is the position
FFmpeg reports moving forward (its output time or frame count), not merely its blocks arriving,
since FFmpeg stuck between frames may repeat the same numbers. The timeout has to cover the
quiet phases too: opening the input, and ``+faststart`` rewriting the output after the last frame.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from farm.base.child_guard import ChildGuard
from farm.base.errors import FarmError
from farm.domain import defaults
from farm_node.progress import ProgressParser

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
_PIPE_DRAIN_S = 5.0  # after FFmpeg exits, how long its pipes may take to reach end-of-file
_LINE_LIMIT = 1 << 20  # longer lines are skipped, not fatal

ProgressCallback = Callable[[float], Awaitable[None] | None]

# Lines FFmpeg prints after the one that says what went wrong.
_GENERIC = re.compile(r"^(conversion failed!?|exiting normally.*|error while .*filtergraph.*|\s*)$", re.I)
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]+ @ (?:0x)?[0-9a-f]+\]\s*", re.I)


class FFmpegError(FarmError, RuntimeError):
    """FFmpeg exited non-zero. ``reason`` is one line for a user; ``log_tail`` is for the job's log."""

    def __init__(self, reason: str, *, returncode: int | None, log_tail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.returncode = returncode  # negative: killed by that signal
        self.log_tail = log_tail


class FFmpegStalled(FFmpegError):
    """The progress watchdog stopped FFmpeg: worth another try (the next run may not hang)."""

    def __init__(self, timeout: float, *, returncode: int | None, log_tail: str = ""):
        super().__init__(
            f"FFmpeg made no progress for {timeout:g} s; stopped it", returncode=returncode, log_tail=log_tail
        )
        self.timeout = timeout


@dataclass(frozen=True)
class FFmpegResult:
    returncode: int | None
    log_tail: str
    cancelled: bool
    elapsed: float  # seconds
    pid: int  # also the process group id


async def run_ffmpeg(
    args: list[str],
    *,
    duration: float,
    on_progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    log_lines: int = 50,
    kill_grace: float = KILL_GRACE_S,
    progress_timeout: float | None = defaults.PROGRESS_TIMEOUT_S,
    guard: ChildGuard | None = None,
) -> FFmpegResult:
    """Run ``args`` (with ``-progress pipe:1``); ``on_progress(percent)`` once per progress block.

    ``cancel`` set: FFmpeg's group is stopped and the result says ``cancelled``. The task itself
    cancelled: the group is stopped, then ``CancelledError`` propagates. No progress for
    ``progress_timeout`` seconds (``None``: no watchdog): the group is stopped and
    ``FFmpegStalled`` raised. A non-zero exit otherwise raises ``FFmpegError``.
    """
    if isinstance(args, (str, bytes)):
        raise TypeError("run_ffmpeg takes an argument list, never a shell string")
    started = time.monotonic()
    guard = guard or ChildGuard()
    # Forked from this thread, the loop's, which waits below for FFmpeg's end: the parent-death
    # signal (tied to the forking thread on Linux) fires only when the node itself dies.
    proc = await asyncio.create_subprocess_exec(
        *guard.command(args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        # Windows has no sessions: a group of its own keeps the console's Ctrl+C (meant for the node,
        # which drains) from reaching FFmpeg, as the session does on POSIX.
        creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        limit=_LINE_LIMIT,
        **guard.popen_kwargs(),
    )
    try:
        watch = guard.watch(proc.pid)
    except BaseException:
        await asyncio.shield(_stop(proc, 0))
        raise
    tail: deque[str] = deque(maxlen=log_lines)
    progress = _Progress(ProgressParser(duration))
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes (above)
    readers = [
        asyncio.create_task(_read_progress(proc.stdout, progress, on_progress)),
        asyncio.create_task(_read_log(proc.stderr, tail)),
    ]
    exited = asyncio.create_task(proc.wait())
    cancel_asked = asyncio.create_task(cancel.wait()) if cancel is not None else None
    stalled = asyncio.create_task(progress.stalled(progress_timeout)) if progress_timeout else None
    cancelled = stopped_stalled = False
    try:
        await asyncio.wait(
            {t for t in (exited, cancel_asked, stalled) if t is not None}, return_when=asyncio.FIRST_COMPLETED
        )
        if not exited.done():
            cancelled = cancel_asked is not None and cancel_asked.done()
            stopped_stalled = not cancelled
            await _stop(proc, kill_grace)
        await exited
        # Normally at end-of-file already; a leftover holding the pipes open must not hang us.
        await asyncio.wait(readers, timeout=_PIPE_DRAIN_S)
        for task in readers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("reading FFmpeg's output failed", exc_info=task.exception())
    except BaseException:  # CancelledError above all: never leave FFmpeg running behind us
        await asyncio.shield(_stop(proc, kill_grace))
        raise
    finally:
        watch.release()
        for pending in (*readers, exited, cancel_asked, stalled):
            if pending is not None and not pending.done():
                pending.cancel()
    log_tail = "\n".join(tail)
    result = FFmpegResult(proc.returncode, log_tail, cancelled, time.monotonic() - started, proc.pid)
    if stopped_stalled and progress_timeout:  # only the watchdog stops FFmpeg unasked
        raise FFmpegStalled(progress_timeout, returncode=proc.returncode, log_tail=log_tail)
    if proc.returncode != 0 and not cancelled:
        raise FFmpegError(failure_reason(tail, proc.returncode), returncode=proc.returncode, log_tail=log_tail)
    return result


class _Progress:
    """The parser, plus when FFmpeg's reported position last moved forward."""

    def __init__(self, parser: ProgressParser):
        self.parser = parser
        self.position: tuple[float, int] = (-1.0, -1)
        self.advanced_at = time.monotonic()

    def feed(self, line: bytes) -> float | None:
        percent = self.parser.feed(line)
        if percent is not None:  # a block ended: did anything move on?
            now = (self.parser.out_time or 0.0, self.parser.frame or 0)
            if now[0] > self.position[0] or now[1] > self.position[1]:
                self.position = (max(now[0], self.position[0]), max(now[1], self.position[1]))
                self.advanced_at = time.monotonic()
        return percent

    async def stalled(self, timeout: float) -> None:
        """Returns once the position has not moved for ``timeout`` seconds."""
        while (left := self.advanced_at + timeout - time.monotonic()) > 0:
            await asyncio.sleep(left)


async def _read_progress(
    stream: asyncio.StreamReader, progress: _Progress, on_progress: ProgressCallback | None
) -> None:
    async for line in _lines(stream):
        percent = progress.feed(line)
        if percent is None or on_progress is None:
            continue
        try:
            outcome = on_progress(percent)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            # A failed progress report (Redis away for a moment) must not fail the transcode.
            log.exception("progress callback failed")


async def _read_log(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    async for line in _lines(stream):
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            tail.append(text)


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # longer than the limit: dropped by the reader, skip it
            continue
        if not line:
            return
        yield line


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to FFmpeg's group, SIGKILL if it is still there after ``grace``; then reap it."""
    if proc.returncode is None:
        _signal_group(proc, signal.SIGTERM)
        if hasattr(signal, "SIGCONT"):
            _signal_group(proc, signal.SIGCONT)  # a stopped FFmpeg (SIGSTOP) acts on SIGTERM only once resumed
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            _signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
    await proc.wait()


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    # Only while FFmpeg is unreaped: its pid, the group's id, cannot have been reused yet.
    if proc.returncode is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:  # Windows: no process groups
            proc.terminate()
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass  # gone meanwhile


def failure_reason(lines: Iterable[str], returncode: int | None) -> str:
    """The last line of FFmpeg's log that says something, without its ``[ctx @ 0x...]`` prefix."""
    for line in reversed(list(lines)):
        text = _CONTEXT_PREFIX.sub("", line.strip())
        if not _GENERIC.match(text):
            return text
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"FFmpeg was killed by {name}"
    return f"FFmpeg exited with status {returncode}"
