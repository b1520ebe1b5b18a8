"""Real transcodes: every format at every resolution, checked by probing the output, plus cancel,
kill and failure. Sources are 1 s at 10 fps so that the whole matrix takes seconds."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import psutil
import pytest

from farm.domain.jobspec import RESOLUTIONS, OutputConfig
from farm.domain.media import MediaInfo, find_ffmpeg, probe
from farm_node.ffmpeg_args import build_args, target_dimensions
from farm_node.ffmpeg_runner import FFmpegError, FFmpegResult, run_ffmpeg
from tests.clips import realtime_args, rotated

CODECS = {"mp4": ("h264", "aac"), "webm": ("vp9", "opus"), "hevc": ("hevc", "aac")}
CONTAINERS = {"mp4": "mp4", "webm": "webm", "hevc": "mp4"}


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def transcode(source: Path, out_dir: Path, config: OutputConfig) -> tuple[MediaInfo, MediaInfo, list[float]]:
    """Source info, output info and the progress reported, for one real run of build_args."""
    info = probe(source)
    output = out_dir / config.output_name
    percents: list[float] = []
    result = run(
        run_ffmpeg(
            build_args(find_ffmpeg(), source, output, config, info), duration=info.duration, on_progress=percents.append
        )
    )
    assert isinstance(result, FFmpegResult)
    assert (result.returncode, result.cancelled) == (0, False)
    return info, probe(output), percents


def assert_is_rendition(source: MediaInfo, out: MediaInfo, config: OutputConfig, percents: list[float]) -> None:
    video, audio = CODECS[config.format]
    assert out.video_codec == video
    assert out.audio_codec == (audio if config.include_audio and source.has_audio else None)
    assert CONTAINERS[config.format] in out.container.split(",")
    assert (out.width, out.height) == target_dimensions(source.width, source.height, config)
    assert out.width % 2 == 0 and out.height % 2 == 0
    assert min(out.width, out.height) == min(config.short_side, min(source.width, source.height))
    assert out.rotation == 0
    assert out.duration == pytest.approx(source.duration, abs=0.2)
    assert percents and percents == sorted(percents) and percents[-1] == 100.0


@pytest.fixture(scope="module")
def hd_clip(make_clip) -> Path:
    """1080p so that 1080p itself is reached without upscaling."""
    return make_clip(1920, 1080, 1.0, audio=True, fps=10)


@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
@pytest.mark.parametrize("fmt", list(CODECS))
def test_every_format_at_every_resolution(hd_clip, tmp_path, fmt, resolution):
    config = OutputConfig(resolution, fmt)
    source, out, percents = transcode(hd_clip, tmp_path, config)
    assert_is_rendition(source, out, config, percents)
    assert min(out.width, out.height) == RESOLUTIONS[resolution]
    if fmt == "hevc":
        with av.open(str(tmp_path / config.output_name)) as container:
            assert container.streams.video[0].codec_tag == "hvc1"  # what Apple players need


@pytest.mark.parametrize("fmt", list(CODECS))
def test_threads_cap_the_cores_a_job_uses(make_clip, tmp_path, fmt):
    """``farm-node --threads 1``: filters and encoder (x265's pool too) each keep to one thread, so
    the job's FFmpeg uses about one core of this machine however many it has; the
    output is the same rendition. Measured as FFmpeg's CPU time over its wall time (more load on the
    machine only lowers it)."""
    source = make_clip(1280, 720, 3.0, audio=True, fps=25)
    config = OutputConfig("720p", fmt)
    info = probe(source)
    output = tmp_path / config.output_name
    args = build_args(find_ffmpeg(), source, output, config, info, threads=1)
    assert args.count("-threads") == 1 and "-filter_threads" in args
    assert fmt != "hevc" or any(arg.endswith(":pools=1") for arg in args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
    assert cores < 1.35, f"{fmt} with one thread per stage used {cores:.2f} cores"
    out = probe(output)
    assert (out.video_codec, out.width, out.height) == (CODECS[fmt][0], 1280, 720)
    assert out.duration == pytest.approx(info.duration, abs=0.2)


def test_threads_below_one_are_refused(clip, tmp_path):
    with pytest.raises(ValueError, match="threads must be at least 1"):
        build_args("ffmpeg", clip, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), probe(clip), threads=0)


@pytest.mark.parametrize("fmt", list(CODECS))
def test_without_audio(make_clip, tmp_path, fmt):
    config = OutputConfig("360p", fmt, include_audio=False)
    source, out, percents = transcode(make_clip(640, 360, 1.0, audio=True, fps=10), tmp_path, config)
    assert source.has_audio and out.audio_codec is None
    assert_is_rendition(source, out, config, percents)


def test_source_without_audio(make_clip, tmp_path):
    config = OutputConfig("360p", "mp4")
    source, out, percents = transcode(make_clip(640, 360, 1.0, audio=False, fps=10), tmp_path, config)
    assert out.audio_codec is None
    assert_is_rendition(source, out, config, percents)


def test_never_upscaled(make_clip, tmp_path):
    config = OutputConfig("1080p", "mp4")
    source, out, percents = transcode(make_clip(640, 360, 1.0, audio=True, fps=10), tmp_path, config)
    assert (out.width, out.height) == (640, 360)
    assert_is_rendition(source, out, config, percents)


@pytest.mark.parametrize("fmt", list(CODECS))
def test_portrait_phone_clip_stays_portrait(make_clip, tmp_path, fmt):
    """Landscape frames with a 90° display matrix, as phones record: the output is upright, 480 wide."""
    phone = rotated(make_clip(1280, 720, 1.0, audio=True, fps=10), tmp_path / "phone.mp4", 90)
    config = OutputConfig("480p", fmt)
    source, out, percents = transcode(phone, tmp_path, config)
    assert (source.width, source.height) == (720, 1280)
    assert (out.width, out.height) == (480, 854)
    assert_is_rendition(source, out, config, percents)


@pytest.mark.parametrize(
    "suffix, remux",
    [
        (".mkv", []),
        (".webm", ["-c:v", "libvpx-vp9", "-cpu-used", "8", "-c:a", "libopus"]),
        (".ts", []),
        (".mpg", ["-c:v", "mpeg2video", "-c:a", "mp2"]),
        (".h264", ["-an", "-f", "h264"]),
    ],
)
def test_other_source_containers(make_clip, tmp_path, suffix, remux):
    """The node forces the probed demuxer with -f: each accepted container still reads under it."""
    source = tmp_path / f"source{suffix}"
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(make_clip(640, 360, 1.0, audio=True, fps=10)),
            *(remux or ["-c", "copy"]),
            str(source),
        ],
        check=True,
    )
    config = OutputConfig("360p", "mp4")
    info, out, percents = transcode(source, tmp_path, config)
    assert (out.width, out.height, out.video_codec) == (640, 360, "h264")
    assert out.duration == pytest.approx(info.duration, abs=0.2)


# -- stopping and failing ----------------------------------------------------------------------


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def ffmpeg_children() -> list[int]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_cancel_event_stops_ffmpeg(long_clip, tmp_path):
    cancel_requested: list[float] = []

    async def scenario() -> FFmpegResult:
        cancel = asyncio.Event()

        def on_progress(percent: float) -> None:
            cancel_requested.append(time.monotonic())
            cancel.set()

        return await run_ffmpeg(
            realtime_args(long_clip, tmp_path / "out.webm"), duration=20.0, on_progress=on_progress, cancel=cancel
        )

    result = run(scenario())
    assert result.cancelled
    assert time.monotonic() - cancel_requested[0] < 3  # the clip is 20 s at real time
    assert result.elapsed < 10
    assert_group_gone(result.pid)
    assert ffmpeg_children() == []


def test_task_cancellation_stops_ffmpeg(long_clip, tmp_path):
    async def scenario() -> list[int]:
        started = asyncio.Event()
        task = asyncio.create_task(
            run_ffmpeg(
                realtime_args(long_clip, tmp_path / "out.webm"),
                duration=20.0,
                on_progress=lambda percent: started.set(),
            )
        )
        await asyncio.wait_for(started.wait(), 30)
        pids = ffmpeg_children()
        assert pids
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 3
        return pids

    for pid in run(scenario()):
        assert not psutil.pid_exists(pid)
        assert_group_gone(pid)


# Stands in for an FFmpeg that ignores SIGTERM and has a child: the whole group must still go.
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ])
    print(child.pid, file=sys.stderr, flush=True)
    print("out_time_us=1000000", "progress=continue", sep="\\n", flush=True)
    time.sleep(60)
""")


def test_cancel_kills_the_whole_group_even_if_sigterm_is_ignored():
    async def scenario() -> FFmpegResult:
        cancel = asyncio.Event()
        return await run_ffmpeg(
            [sys.executable, "-c", STUBBORN],
            duration=10.0,
            on_progress=lambda percent: cancel.set(),
            cancel=cancel,
            kill_grace=0.5,
        )

    result = run(scenario(), timeout=30)
    assert result.cancelled and result.returncode == -signal.SIGKILL
    grandchild = int(result.log_tail.split()[0])
    deadline = time.monotonic() + 5
    # The orphan is gone or a zombie (whether init reaps it soon depends on the machine).
    while _running(grandchild):
        assert time.monotonic() < deadline, "the child of the killed process is still running"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_failing_input_raises_with_a_reason(clip, tmp_path):
    info = probe(clip)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:3000])  # the mp4 index is at the end: cut off
    args = build_args(find_ffmpeg(), broken, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), info)
    with pytest.raises(FFmpegError) as caught:
        run(run_ffmpeg(args, duration=info.duration))
    error = caught.value
    assert isinstance(error, RuntimeError)
    assert error.returncode and error.returncode > 0
    assert "Invalid data found when processing input" in error.reason
    assert "\n" not in error.reason and "@ 0x" not in error.reason
    assert "moov atom not found" in error.log_tail


def test_guard_holds_when_the_input_is_swapped_after_probe(clip, tmp_path):
    """The command forces the probed demuxer: a list put in the video's place is not read as one.

    The list references a FIFO: FFmpeg opening it would block on it (see tests/farm/test_media.py),
    so a prompt failure shows the reference was never opened. The control, the same command without
    ``-f``, does open it.
    """
    info = probe(clip)
    secret = tmp_path / "secret.mp4"
    os.mkfifo(secret)
    swapped = tmp_path / "input.mp4"
    swapped.write_text("ffconcat version 1.0\nfile secret.mp4\n")
    args = build_args(find_ffmpeg(), swapped, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), info)

    forced = args.index("-f")
    assert forced < args.index("-i") and args[forced + 1] == "mov"
    unguarded = args[:forced] + args[forced + 2 :]
    assert _opens_fifo(unguarded, secret)  # control

    assert not _opens_fifo(args, secret)
    with pytest.raises(FFmpegError):
        run(run_ffmpeg(args, duration=info.duration), timeout=20)


def _opens_fifo(args: list[str], fifo: Path, timeout: float = 20.0) -> bool:
    """Whether the command opened ``fifo`` for reading before it exited (then it is killed)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # only succeeds with a reader
                return True
            except OSError:
                if proc.poll() is not None:
                    return False
                time.sleep(0.02)
        raise AssertionError("FFmpeg neither exited nor opened the FIFO")
    finally:
        proc.kill()
        proc.wait()


def test_progress_callback_may_be_async_and_its_failure_does_not_fail_the_run(clip, tmp_path):
    info = probe(clip)
    args = build_args(find_ffmpeg(), clip, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), info)
    seen: list[float] = []

    async def on_progress(percent: float) -> None:
        await asyncio.sleep(0)
        seen.append(percent)
        raise ConnectionError("redis went away")

    result = run(run_ffmpeg(args, duration=info.duration, on_progress=on_progress))
    assert result.returncode == 0 and seen[-1] == 100.0


def test_args_must_be_a_list():
    with pytest.raises(TypeError):
        run(run_ffmpeg("ffmpeg -i x y", duration=1.0))
