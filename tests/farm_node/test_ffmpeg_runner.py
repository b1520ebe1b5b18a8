"""FFmpeg's lifetime: it dies with the process that started it, and the progress watchdog stops
one that makes no progress. Real FFmpeg on generated clips, real signals; the watchdog's idea of
"progress" is pinned with small stand-in programs that print ``-progress`` blocks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from farm.base import child_guard
from farm.base.child_guard import LIFELINE, LINUX, SETPRIV, WINDOWS, ChildGuard, default_kind
from farm.domain.jobspec import OutputConfig
from farm.domain.media import find_ffmpeg, probe
from farm_node.ffmpeg_args import build_args
from farm_node.ffmpeg_runner import FFmpegStalled, run_ffmpeg
from tests.clips import realtime_args

ROOT = Path(__file__).resolve().parents[2]


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` is gone (or a zombie); fails after ``timeout``."""
    started = time.monotonic()
    while alive(pid):
        assert time.monotonic() - started < timeout, f"FFmpeg (pid {pid}) still runs {timeout} s after its parent died"
        time.sleep(0.05)
    return time.monotonic() - started


# -- FFmpeg dies with its parent -------------------------------------------------------------------

# A parent that runs FFmpeg the node's way with the given guard, says FFmpeg's pid, then keeps at it.
PARENT = textwrap.dedent("""
    import asyncio, json, sys
    from farm.base.child_guard import ChildGuard
    from farm_node.ffmpeg_runner import run_ffmpeg

    async def main(kind, args):
        started = asyncio.Event()
        task = asyncio.create_task(run_ffmpeg(args, duration=20.0, guard=ChildGuard(kind=kind),
                                              on_progress=lambda p: started.set()))
        await started.wait()
        print("running", flush=True)
        await task

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
""")


@pytest.mark.parametrize("kind", [SETPRIV, LINUX, LIFELINE])
def test_ffmpeg_dies_within_3_s_of_its_parent_s_sigkill(long_clip, tmp_path, kind):
    """SIGKILL of the parent alone (not FFmpeg's group): FFmpeg, in a session of its own, must go too.
    The lifeline is macOS's way; it runs here as well, since it needs nothing but /bin/sh."""
    if kind in (LINUX, SETPRIV) and not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    if kind == SETPRIV and not child_guard._setpriv():
        if os.environ.get("CI"):
            pytest.fail("CI's Debian has util-linux's setpriv with --pdeathsig")
        pytest.skip("no setpriv with --pdeathsig here (util-linux older than 2.33)")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, kind, json.dumps(realtime_args(long_clip, tmp_path / "out.webm"))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline().strip() == "running"
        (ffmpeg,) = [c for c in psutil.Process(parent.pid).children() if "ffmpeg" in c.name()]
        assert os.getsid(ffmpeg.pid) == ffmpeg.pid != os.getsid(parent.pid), "FFmpeg keeps a session of its own"
        parent.kill()
        parent.wait(10)
        took = wait_gone(ffmpeg.pid, timeout=3)
        print(f"{kind}: FFmpeg gone {took:.2f} s after its parent's SIGKILL")
    finally:
        parent.kill()
        parent.wait(10)
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if child_guard._LIFELINE_NAME in (p.info["cmdline"] or [])[3:4]
    ]
    assert not [p for p in leftovers if alive(p.pid)], "the lifeline watchdog ends with its child"


def test_a_clean_end_leaves_no_watchdog_and_kills_nothing(make_clip, tmp_path):
    """The lifeline is told "done": the group it watched, now free, is never signalled."""
    source = make_clip(320, 240, 1.0, fps=10)
    args = build_args(find_ffmpeg(), source, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), probe(source))
    result = run(run_ffmpeg(args, duration=1.0, guard=ChildGuard(kind=LIFELINE)))
    assert result.returncode == 0
    assert not [c for c in psutil.Process().children(recursive=True) if alive(c.pid)]


@pytest.mark.parametrize(
    "platform, kind",
    [
        ("linux", SETPRIV if child_guard._setpriv() else LINUX),
        ("win32", WINDOWS),
        ("darwin", LIFELINE),
        ("freebsd14", LIFELINE),
    ],
)
def test_each_platform_has_its_way(platform, kind):
    assert default_kind(platform) == kind


def test_only_the_prctl_way_needs_a_preexec_hook_and_only_setpriv_changes_the_command():
    """A preexec hook makes Python fork the whole node (about 20 ms per FFmpeg start): where setpriv
    can set the signal, FFmpeg is started through it instead, with no hook."""
    assert set(ChildGuard(kind=LINUX).popen_kwargs()) == {"preexec_fn"}
    assert ChildGuard(kind=SETPRIV).popen_kwargs() == {}
    assert ChildGuard(kind=LIFELINE).popen_kwargs() == ChildGuard(kind=WINDOWS).popen_kwargs() == {}
    argv = ["ffmpeg", "-i", "in.mp4", "out.mp4"]
    assert ChildGuard(kind=LINUX).command(argv) == ChildGuard(kind=LIFELINE).command(argv) == argv
    wrapped = ChildGuard(kind=SETPRIV, sig=signal.SIGTERM).command(argv)
    assert wrapped[1:4] == ["--pdeathsig", "TERM", "--"] and wrapped[4:] == argv


def test_the_windows_job_limits_have_windows_layout():
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION is 144 bytes on 64-bit Windows (winnt.h); a wrong
    layout would make SetInformationJobObject fail, and FFmpeg would not be tied to the node."""
    import ctypes

    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("the layout checked is the 64-bit one")
    limits = child_guard._job_limit_struct()
    assert ctypes.sizeof(limits) == 144
    assert limits.BasicLimitInformation.offset == 0 and limits.IoInfo.offset == 64


# -- the progress watchdog ---------------------------------------------------------------------------


def test_a_stopped_ffmpeg_is_stopped_for_good_after_the_progress_timeout(long_clip, tmp_path):
    """SIGSTOP of FFmpeg alone: no block comes any more. The watchdog kills it and says why."""
    stopped_at: list[float] = []

    async def scenario():
        def on_progress(percent: float) -> None:
            if not stopped_at:
                (pid,) = [c.pid for c in psutil.Process().children() if "ffmpeg" in c.name()]
                os.kill(pid, signal.SIGSTOP)
                stopped_at.append(time.monotonic())

        return await run_ffmpeg(
            realtime_args(long_clip, tmp_path / "out.webm"), duration=20.0, on_progress=on_progress, progress_timeout=2
        )

    with pytest.raises(FFmpegStalled) as raised:
        run(scenario())
    took = time.monotonic() - stopped_at[0]
    assert str(raised.value) == raised.value.reason == "FFmpeg made no progress for 2 s; stopped it"
    assert 1.5 < took < 15, took
    assert not [c for c in psutil.Process().children(recursive=True) if alive(c.pid)]


def fake_ffmpeg(tmp_path: Path, body: str) -> list[str]:
    """A stand-in FFmpeg that prints ``-progress`` blocks as ``body`` says (out_time_us, frame)."""
    script = tmp_path / "fake_ffmpeg.py"
    script.write_text(
        textwrap.dedent("""
        import sys, time
        def block(us, frame):
            print(f"frame={frame}", f"out_time_us={us}", "progress=continue", sep="\\n", flush=True)
    """)
        + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


def test_blocks_that_repeat_the_same_position_are_no_progress(tmp_path):
    """FFmpeg stuck between frames may go on printing blocks: what counts is the position moving."""
    args = fake_ffmpeg(
        tmp_path,
        """
        block(1_000_000, 25)
        while True:
            block(1_000_000, 25)
            time.sleep(0.1)
    """,
    )
    started = time.monotonic()
    with pytest.raises(FFmpegStalled):
        run(run_ffmpeg(args, duration=10.0, progress_timeout=1, kill_grace=0.5), timeout=30)
    assert time.monotonic() - started < 15


def test_slow_but_steady_progress_is_left_alone(tmp_path):
    """Position moving by frames only (out_time held back, as while an encoder's lookahead fills),
    then by time only: both are progress, for longer than the timeout in all."""
    args = fake_ffmpeg(
        tmp_path,
        """
        for i in range(6):
            block(0, i)
            time.sleep(0.4)
        for i in range(6):
            block(i * 100_000, 6)
            time.sleep(0.4)
        print("progress=end", flush=True)
    """,
    )
    result = run(run_ffmpeg(args, duration=10.0, progress_timeout=1.5), timeout=60)
    assert result.returncode == 0 and not result.cancelled
