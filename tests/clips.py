"""What the FFmpeg on the machine may not make: a clip with a display rotation, another FFmpeg.

``ffmpeg -display_rotation`` exists from FFmpeg 6.0, and releases differ in what they make of the
older ``rotate`` tag (Debian 12's 5.1 writes it as a matrix, 9.0 ignores it); so the display matrix
is written here, into the video track's header (``tkhd``), exactly as FFmpeg's muxer writes it.
"""

from __future__ import annotations

import math
import shutil
import struct
from pathlib import Path

import imageio_ffmpeg


def rotated(source: Path, dest: Path, degrees: int) -> Path:
    """A copy of the MP4 ``source`` shown rotated by ``degrees`` counter-clockwise, as
    ``ffmpeg -display_rotation DEGREES -i SOURCE -c copy DEST`` makes it."""
    shutil.copyfile(source, dest)
    data = bytearray(dest.read_bytes())
    tkhd = _video_tkhd(data)
    version = data[tkhd]
    # After version/flags: times, track id and duration (20 or 32 bytes), then 16 of layer & co.
    matrix_at = tkhd + 4 + (32 if version == 1 else 20) + 16
    struct.pack_into(">9i", data, matrix_at, *_display_matrix(degrees))
    dest.write_bytes(bytes(data))
    return dest


def _display_matrix(degrees: float) -> list[int]:
    """A counter-clockwise rotation as libavutil writes it (``av_display_rotation_set(-degrees)``,
    which takes a clockwise angle): 16.16 fixed point, 2.30 for the last column."""
    radians = math.radians(degrees)
    c, s = round(math.cos(radians) * 65536), round(math.sin(radians) * 65536)
    return [c, -s, 0, s, c, 0, 0, 0, 1 << 30]


def _boxes(data: bytearray, start: int, end: int):
    """(type, payload start, end) of each box in ``data[start:end]`` (32-bit sizes: small clips)."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        yield kind, start + 8, start + size
        start += size


def _video_tkhd(data: bytearray) -> int:
    """Where the payload of the video track's ``tkhd`` starts."""
    for kind, payload, end in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak, trak_payload, trak_end in _boxes(data, payload, end):
            if trak != b"trak":
                continue
            children = {k: (p, e) for k, p, e in _boxes(data, trak_payload, trak_end)}
            handler = {k: p for k, p, _ in _boxes(data, *children[b"mdia"])}[b"hdlr"]
            if data[handler + 8 : handler + 12] == b"vide":  # version/flags, pre_defined, handler type
                return children[b"tkhd"][0]
    raise ValueError("no video track in this MP4")


def ffmpeg_claiming(folder: Path, version: str) -> Path:
    """``folder/ffmpeg`` that reports ``version`` (``ffmpeg version VERSION Copyright ...``, as a
    distribution's build does) and runs the bundled FFmpeg for everything else."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / "ffmpeg"
    fake.write_text(
        f'#!/bin/sh\ncase " $* " in *" -version "*) echo "ffmpeg version {version} Copyright"; '
        f'exit 0;; esac\nexec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def realtime_args(source: Path, output: Path) -> list[str]:
    """The node's own FFmpeg command for ``source`` (360p webm), read at real-time speed (``-re``)
    so that the run is surely still going when a test acts on it."""
    from farm.domain.jobspec import OutputConfig
    from farm.domain.media import find_ffmpeg, probe
    from farm_node.ffmpeg_args import build_args

    args = build_args(find_ffmpeg(), source, output, OutputConfig("360p", "webm"), probe(source))
    guard = args.index("-i") - 4
    return [*args[:guard], "-re", *args[guard:]]
