"""Real processes for tests of what a node may touch: something that looks like a live ``farm-node``,
and FFmpeg working in a folder, either under a parent or orphaned (its parent gone)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from farm.domain.media import find_ffmpeg


def node_like(folder: Path, code: str = "", *args: str) -> subprocess.Popen:
    """A Python process run as ``python <folder>/farm-node ARGS``, which is how a pip-installed
    ``farm-node`` looks in the process table; it runs ``code`` then sleeps until killed."""
    script = folder / "farm-node"
    script.write_text(textwrap.dedent(code) + "\nimport time\nwhile True:\n    time.sleep(1)\n")
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True)


def slow_ffmpeg(output: Path) -> list[str]:
    """An FFmpeg that writes ``output`` (named as the node names files: a ``file:`` URL) for a
    minute at almost no CPU cost: a tiny test pattern read at its real rate."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return [
        find_ffmpeg(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=32x32:rate=2",
        "-t",
        "60",
        "-y",
        f"file:{output}",
    ]


def orphaned(cmd: list[str]) -> psutil.Process:
    """Start ``cmd`` in its own session from a parent that exits at once, as a node killed with
    SIGKILL leaves its FFmpeg: running, adopted by init (or a subreaper)."""
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; "
            f"print(subprocess.Popen({cmd!r}, start_new_session=True, stdin=subprocess.DEVNULL, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    proc = psutil.Process(int(launcher.stdout))
    deadline = time.monotonic() + 10
    while "ffmpeg" not in " ".join(proc.cmdline()) and time.monotonic() < deadline:
        time.sleep(0.05)  # between fork and exec it is still a Python
    return proc


def ended(proc: psutil.Process, timeout: float = 5) -> bool:
    """Whether ``proc`` exits (or is a zombie waiting to be reaped) within ``timeout``."""
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    return True
