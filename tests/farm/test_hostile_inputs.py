"""Broken and crafted inputs at the gate (``probe``, ``check_inputs``, the node's FFmpeg command).

Every file here is made for real with FFmpeg, then broken or crafted byte by byte where FFmpeg will
not write such a thing (a frame too large for libavcodec, a QuickTime reference movie). The makers
are plain functions so that tests/e2e/test_hostile_submit.py sends the same files through the CLI
and through a node.

What references another file is watched with a FIFO: opening a FIFO for reading blocks until a
writer comes, and a writer's non-blocking open succeeds only while a reader has it open, so a
watcher that keeps trying such opens sees any reader (and, by closing, releases it).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest

from farm.client import SubmitError, check_inputs
from farm.domain.jobspec import OutputConfig
from farm.domain.media import MAX_DIMENSION, MAX_DURATION_S, NotAVideoError, find_ffmpeg, probe
from farm_node.ffmpeg_args import build_args


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True, timeout=120
    )


# -- makers ------------------------------------------------------------------------------------


def cut_in_half(source: Path, dest: Path) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def remux(source: Path, dest: Path, *options: str) -> Path:
    ffmpeg("-i", source, "-c", "copy", *options, dest)
    return dest


def image_named(dest: Path, codec_suffix: str) -> Path:
    """A real PNG or JPEG still, saved under ``dest`` (whatever its extension says)."""
    real = dest.with_name(dest.stem + "_real" + codec_suffix)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", "-update", "1", real)
    real.rename(dest)
    return dest


def audio_only(dest: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", "-f", "mp4", dest)
    return dest


def zero_frames(dest: Path) -> Path:
    """A real container with a video stream in its header and not a single frame."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "0", "-c:v", "libx264", dest)
    return dest


def still_video(dest: Path, hours: float) -> Path:
    """A long video made in milliseconds: one gray frame every ten minutes."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"color=c=gray:s=160x120:r=1/600:d={hours * 3600:g}",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "stillimage",
        "-pix_fmt",
        "yuv420p",
        dest,
    )
    return dest


def huge_frame(dest: Path, width: int = 16384, height: int = 16384) -> Path:
    """An AVI that declares ``width`` x ``height`` frames.

    No encoder makes a 16384x16384 frame: libavutil refuses any picture of (w+128)*(h+128) >=
    INT_MAX/8 pixels, about 16255 square. So a tiny raw-video AVI gets the size written into its
    headers (``avih`` and the ``strf`` BITMAPINFOHEADER), which is what a crafted file would do.
    """
    small = dest.with_name(dest.stem + "_small.avi")
    ffmpeg("-f", "lavfi", "-i", "color=black:s=16x16:r=5:d=0.4", "-c:v", "rawvideo", "-pix_fmt", "gray", small)
    data = bytearray(small.read_bytes())
    main_header = data.index(b"avih") + 8
    struct.pack_into("<II", data, main_header + 32, width, height)  # dwWidth, dwHeight
    stream_format = data.index(b"strf") + 8
    struct.pack_into("<ii", data, stream_format + 4, width, height)  # biWidth, biHeight
    dest.write_bytes(data)
    small.unlink()
    return dest


def hls_playlist(dest: Path, segment: Path) -> Path:
    dest.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n")
    return dest


def concat_list(dest: Path, referenced_name: str) -> Path:
    dest.write_text(f"ffconcat version 1.0\nfile {referenced_name}\n")
    return dest


def sdp_file(dest: Path, port: int = 5004) -> Path:
    dest.write_text(
        f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=stream\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    )
    return dest


_BOXES_ON_THE_WAY_TO_DREF = {b"moov", b"trak", b"mdia", b"minf", b"dinf"}


def reference_movie(source_mov: Path, dest: Path, referenced_name: str) -> Path:
    """``source_mov`` with its data reference replaced by a Mac alias to ``referenced_name`` in the
    movie's own folder: a QuickTime reference movie whose samples live in that other file.

    The alias is the record FFmpeg's mov demuxer parses (``mov_read_dref``): volume, file name,
    levels up/down (1, 1: "same folder") and an absolute-path record ``dir:<name>``. The source must
    have its ``moov`` after ``mdat`` (FFmpeg's default), so that the rewrite moves no sample.
    """
    data = source_mov.read_bytes()
    dest.write_bytes(_with_alias(data, 0, len(data), referenced_name))
    return dest


def _alias_entry(referenced_name: str) -> bytes:
    name = referenced_name.encode()
    path = b"dir:" + name
    record = (
        b"\0" * 10
        + bytes([1])
        + b"X".ljust(27, b"\0")
        + b"\0" * 12
        + bytes([len(name)])
        + name.ljust(63, b"\0")
        + b"\0" * 16
        + struct.pack(">HH", 1, 1)
        + b"\0" * 16
        + struct.pack(">hH", 2, len(path))
        + path
        + (b"\0" if len(path) % 2 else b"")
        + struct.pack(">hH", -1, 0)
    )
    body = struct.pack(">I", 0) + record  # version 0, flags 0: the data is NOT in this file
    return struct.pack(">I4s", 8 + len(body), b"alis") + body


def _with_alias(data: bytes, start: int, end: int, referenced_name: str) -> bytes:
    out = bytearray()
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        if kind in _BOXES_ON_THE_WAY_TO_DREF:
            inner = _with_alias(data, pos + 8, pos + size, referenced_name)
            out += struct.pack(">I4s", 8 + len(inner), kind) + inner
        elif kind == b"dref":
            inner = data[pos + 8 : pos + 12] + struct.pack(">I", 1) + _alias_entry(referenced_name)
            out += struct.pack(">I4s", 8 + len(inner), kind) + inner
        else:
            out += data[pos : pos + size]
        pos += size
    return bytes(out)


class FifoWatch:
    """Watches FIFOs from a thread; ``opened`` lists those some process opened for reading.

    A FIFO that disappears (its folder was cleaned up) is simply no longer watched.
    """

    def __init__(self, *fifos: Path):
        self.fifos = list(fifos)
        self.opened: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # ENXIO: no reader; ENOENT: removed
                    continue
                if fifo not in self.opened:  # closing gave the reader end-of-file: it moves on
                    self.opened.append(fifo)
            time.sleep(0.01)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# -- refused at the gate, with the reason ---------------------------------------------------------


def refusal(path: Path) -> str:
    with pytest.raises(NotAVideoError) as caught:
        probe(path)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_empty_and_text_named_mp4(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 40)
    assert refusal(empty) == "empty.mp4 is empty"
    assert refusal(text).startswith("notes.mp4 is not a video FFmpeg can read")


@pytest.mark.parametrize("layout, options", [("moov-at-end", ()), ("faststart", ("-movflags", "+faststart"))])
def test_an_mp4_cut_in_half_is_refused_as_truncated(clip, tmp_path, layout, options):
    """With the index at the end nothing is readable; with faststart FFmpeg would transcode the
    first half and call it done, and the output would fail its length check on every retry."""
    whole = remux(clip, tmp_path / f"{layout}.mp4", *options)
    half = cut_in_half(whole, tmp_path / f"{layout}-half.mp4")
    if layout == "faststart":  # the control: what FFmpeg alone makes of the file
        with av.open(str(half)) as container:
            assert container.duration / 1e6 == pytest.approx(probe(whole).duration, abs=0.1)

    message = refusal(half)
    found = re.fullmatch(
        rf"{layout}-half\.mp4 is truncated: its structure needs ([\d,]+) bytes but the file "
        rf"has ([\d,]+) \(an interrupted copy or upload\?\); submit the complete file",
        message,
    )
    assert found, message
    needed, size = (int(n.replace(",", "")) for n in found.groups())
    assert size == half.stat().st_size < needed <= whole.stat().st_size


def test_a_matroska_cut_in_half_is_refused_and_a_transport_stream_keeps_what_is_there(clip, tmp_path):
    mkv = cut_in_half(remux(clip, tmp_path / "whole.mkv"), tmp_path / "half.mkv")
    assert "half.mkv is truncated" in refusal(mkv)
    # MPEG-TS says nothing about its length: a cut one is a shorter one, and transcodes as such.
    ts = cut_in_half(remux(clip, tmp_path / "whole.ts"), tmp_path / "half.ts")
    assert 0.3 < probe(ts).duration < 0.8 * probe(clip).duration


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_image_renamed_mp4(tmp_path, suffix):
    image = image_named(tmp_path / f"still{suffix}.mp4", suffix)
    assert refusal(image) == f"still{suffix}.mp4 is an image, not a video"


def test_audio_only(tmp_path):
    assert refusal(audio_only(tmp_path / "voice.mp4")) == "voice.mp4 has no video stream"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_container_without_frames(tmp_path, suffix):
    message = refusal(zero_frames(tmp_path / f"nothing{suffix}"))
    assert message in (
        f"nothing{suffix} has no video stream",
        f"nothing{suffix} holds no video frames (it ends before the first one)",
    )


def test_a_16384_square_frame_is_refused_with_the_size_limit(tmp_path):
    huge = huge_frame(tmp_path / "huge.avi")
    with av.open(str(huge)) as container:  # libavcodec drops the size it cannot hold
        assert container.streams.video[0].codec_context.width == 0
    assert refusal(huge) == (
        f"huge.avi is 16384x16384; the largest frame EncodeFlow accepts is {MAX_DIMENSION}x{MAX_DIMENSION}"
    )


def test_ten_hours_are_accepted_and_25_hours_refused(tmp_path):
    assert MAX_DURATION_S == 24 * 3600
    assert probe(still_video(tmp_path / "ten.mp4", 10)).duration == pytest.approx(36000)
    assert refusal(still_video(tmp_path / "day_and_more.mp4", 25)) == (
        "day_and_more.mp4 lasts 25:00:00; the longest video EncodeFlow accepts lasts 24:00:00 (split it first)"
    )


def test_an_sdp_file_is_refused_for_what_it_is(tmp_path):
    assert refusal(sdp_file(tmp_path / "camera.mp4")).startswith(
        "camera.mp4 is an SDP session description (it points at network streams), not a video"
    )


def test_names_with_control_characters_stay_on_one_line(tmp_path):
    text = tmp_path / "two\nlines\u202e.mp4"
    text.write_text("not a video\n" * 40)
    assert refusal(text).startswith("two\\nlines\\u202e.mp4 is not a video")
    with pytest.raises(SubmitError) as caught:
        check_inputs([text, tmp_path / "gone\n.mp4"])
    message = str(caught.value)
    assert "\n" not in message
    assert "two\\nlines\\u202e.mp4: two\\nlines" in message and "gone\\n.mp4: no such file" in message


# -- a movie that references another file ---------------------------------------------------------


@pytest.fixture
def movie_and_reference(make_clip, tmp_path):
    """(reference movie, the FIFO it references, the same movie's samples as a real file)."""
    source = remux(make_clip(160, 120, 1.0, audio=False), tmp_path / "source.mov")
    movie = reference_movie(source, tmp_path / "ref.mov", "secret.mp4")
    return movie, fifo(tmp_path / "secret.mp4"), source


def test_a_reference_movie_is_refused_without_opening_what_it_references(movie_and_reference):
    movie, secret, _ = movie_and_reference
    with FifoWatch(secret) as control:  # FFmpeg told to follow references does open it
        try:
            av.open(str(movie), options={"enable_drefs": "1"}).close()
        except av.error.FFmpegError:
            pass  # the watcher's writer gave it no data
    assert control.opened == [secret]

    with FifoWatch(secret) as watch:
        message = refusal(movie)
    assert watch.opened == []
    assert message.startswith("ref.mov is a reference movie: its media lives in other files")


def test_the_nodes_ffmpeg_command_never_follows_references(movie_and_reference, tmp_path):
    """Were a reference movie to reach FFmpeg (swapped in after the probe), the node's own command
    leaves ``enable_drefs`` at its default, off: the referenced file is never opened. The control
    is the same command with ``-enable_drefs 1``."""
    movie, secret, source = movie_and_reference
    args = build_args(find_ffmpeg(), movie, tmp_path / "out.mp4", OutputConfig("360p", "mp4"), probe(source))
    forced = args.index("-f")
    assert args[forced - 2 : forced + 2] == ["-protocol_whitelist", "file", "-f", "mov"]
    following = args[: forced + 2] + ["-enable_drefs", "1"] + args[forced + 2 :]

    for command, expected in ((following, [secret]), (args, [])):
        with FifoWatch(secret) as watch:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert watch.opened == expected, command
    assert done.returncode != 0, "with its references skipped, the movie has nothing to transcode"


def test_a_self_contained_movie_with_the_same_layout_is_accepted(movie_and_reference):
    _, _, source = movie_and_reference
    assert probe(source).video_codec == "h264"
