"""Children that die with their parent: no FFmpeg (or local node) goes on working once the
process that started it is gone, however it went (SIGKILL, the OOM killer, a crash).

Such a child runs in its own process group or session (a console's Ctrl-C must reach only its
parent, which then stops it in its own way), so nothing the OS does for a group reaches it
when the parent dies. Each platform has its own way to tie it to its parent:

* Linux: the parent-death signal (``prctl(PR_SET_PDEATHSIG)``), set in the child between fork and
  exec, then a check that the parent is still the one that forked it (it may have died just
  before). The kernel sends it when the *thread* that forked the child ends, not the process:
  every caller forks from a thread that outlives the child (a node's event loop thread, which
  waits for FFmpeg's exit before it can go on; the main thread of ``encodeflow up``). A thread
  pool's worker that may retire while its child runs (the panel's) must not use it. The hook runs
  in the child of a threaded process, where a lock another thread held stays locked, so it does
  only what needs no lock: one C call looked up beforehand, and two system calls. It makes
  Python fork instead of vfork: about 20 ms per start for a node of 240 MB. So where util-linux's
  ``setpriv`` (2.33 or newer, on every current distribution) can set the signal, the child is
  started through it instead (``SETPRIV``: ``setpriv --pdeathsig KILL -- ffmpeg …`` sets it and
  execs FFmpeg, same pid), with no hook and no fork of the node: about 1 ms. It cannot check that
  the parent still lives, so a node killed in the millisecond between the fork and ``setpriv``'s
  call leaves FFmpeg running; a node that starts on that work dir stops it (farm_node/workdir.py).
* Windows: a job object that kills its processes when its last handle closes
  (``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``); the parent holds the only handle, so its death closes
  it. One job per process, created on first use.
* Other POSIX systems (macOS, the BSDs): a lifeline. A tiny ``/bin/sh`` watchdog, in its own
  session, reads a pipe whose only writer is the parent: a clean end is announced with a line,
  while end-of-file without it means the parent died, and the watchdog signals the child's group.

Only the Linux and lifeline ways run on the machines that test this; the Windows code is kept to
the few calls the job object needs.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ctypes

LINUX, SETPRIV, WINDOWS, LIFELINE = "pdeathsig", "setpriv", "job-object", "lifeline"

_PR_SET_PDEATHSIG = 1
# $1: the child's process group; $2: the signal. "done" from the parent means a clean end.
_LIFELINE_SCRIPT = 'IFS= read -r line; [ "$line" = done ] || kill -s "$2" -- "-$1" 2>/dev/null; exit 0'
_LIFELINE_NAME = "encodeflow-child-guard"


def default_kind(platform: str = sys.platform) -> str:
    """The way this platform ties a child to its parent (see the module docstring)."""
    if platform.startswith("linux"):
        return SETPRIV if _setpriv() else LINUX
    if platform == "win32":
        return WINDOWS
    return LIFELINE


@dataclass
class ChildGuard:
    """How children of this process are made to die with it, by ``sig`` (SIGKILL, or SIGTERM for
    a child that stops cleanly on it); ``popen_kwargs()`` before the start, ``watch(pid)`` after."""

    sig: int = getattr(signal, "SIGKILL", signal.SIGTERM)
    kind: str = field(default_factory=default_kind)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as it is to be started: with ``SETPRIV``, behind util-linux's ``setpriv``, which
        sets the parent-death signal and then execs ``argv`` (same pid, same session)."""
        if self.kind != SETPRIV:
            return list(argv)
        name = signal.Signals(self.sig).name.removeprefix("SIG")
        return [_setpriv() or "setpriv", "--pdeathsig", name, "--", *argv]

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra arguments for ``subprocess.Popen`` / ``asyncio.create_subprocess_exec``."""
        if self.kind != LINUX:
            return {}
        libc_prctl = _libc_prctl()  # looked up here: the child must do as little as possible
        parent, sig = os.getpid(), self.sig

        def die_with_parent() -> None:
            libc_prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
            # The parent may have died before the line above: then no signal will ever come.
            if os.getppid() != parent:
                os._exit(1)

        return {"preexec_fn": die_with_parent}

    def watch(self, pid: int) -> Watch:
        """Tie the started child ``pid`` (a group leader for ``LIFELINE``) to this process."""
        if self.kind == WINDOWS:
            _windows_job().assign(pid)
        elif self.kind == LIFELINE:
            return _Lifeline(pid, self.sig)
        return Watch()


class Watch:
    """Call ``release()`` once the child has ended, or is being stopped by its parent."""

    def release(self) -> None:
        pass


class _Lifeline(Watch):
    def __init__(self, pid: int, sig: int):
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _LIFELINE_SCRIPT, _LIFELINE_NAME, str(pid), str(int(sig))],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the console's Ctrl-C must not end the watchdog first
        )  # its pipe's write end is not inheritable (PEP 446): only this process holds it

    def release(self) -> None:
        if self._proc.returncode is not None:
            return
        stdin = self._proc.stdin
        assert stdin is not None  # started with stdin=PIPE
        try:
            stdin.write(b"done\n")
            stdin.close()
        except OSError:
            pass  # it is gone already
        self._proc.wait(5)  # it exits on reading the line: a few milliseconds


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    """util-linux's ``setpriv`` where it can set the parent-death signal (2.33 and newer), else None.

    A ``preexec_fn`` (the ``LINUX`` way) makes Python fork the whole node instead of using vfork:
    about 20 ms per FFmpeg start in a node-sized process, against about 1 ms through ``setpriv``."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        shown = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in shown else None


def _libc_prctl() -> Callable[..., int]:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


# -- Windows ---------------------------------------------------------------------------------

_JOB: _WindowsJob | None = None


def _windows_job() -> _WindowsJob:
    global _JOB
    if _JOB is None:
        _JOB = _WindowsJob()
    return _JOB


def _job_limit_struct() -> type[ctypes.Structure]:
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION, built from portable ctypes types (so its layout can be
    checked anywhere: 144 bytes on 64-bit Windows)."""
    import ctypes

    class Basic(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", ctypes.c_uint32),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", ctypes.c_uint32),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", ctypes.c_uint32),
            ("SchedulingClass", ctypes.c_uint32),
        ]

    class Extended(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", Basic),
            ("IoInfo", ctypes.c_uint64 * 6),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    return Extended


class _WindowsJob:
    """A job object that kills every process in it when this process exits. (Windows only.)"""

    _KILL_ON_JOB_CLOSE = 0x2000
    _EXTENDED_LIMIT_INFORMATION = 9
    _PROCESS_SET_QUOTA_AND_TERMINATE = 0x0100 | 0x0001

    def __init__(self) -> None:
        import ctypes

        self._kernel32 = kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        kernel32.CreateJobObjectW.restype = kernel32.OpenProcess.restype = ctypes.c_void_p
        self._handle = kernel32.CreateJobObjectW(None, None)
        if not self._handle:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        limits = _job_limit_struct()()
        limits.BasicLimitInformation.LimitFlags = self._KILL_ON_JOB_CLOSE
        if not kernel32.SetInformationJobObject(
            ctypes.c_void_p(self._handle), self._EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), ctypes.sizeof(limits)
        ):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]

    def assign(self, pid: int) -> None:
        import ctypes

        process = self._kernel32.OpenProcess(self._PROCESS_SET_QUOTA_AND_TERMINATE, False, pid)
        if not process:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        try:
            if not self._kernel32.AssignProcessToJobObject(ctypes.c_void_p(self._handle), ctypes.c_void_p(process)):
                raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        finally:
            self._kernel32.CloseHandle(ctypes.c_void_p(process))
