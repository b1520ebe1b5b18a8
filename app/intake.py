"""What the panel does with dropped paths, without Qt: expand, probe, describe, thumbnail.

A drop holds files and folders. A file named directly is always probed, so a text file dropped by
mistake is listed with the reason it was refused; a folder is walked recursively and only the files
whose extension says "video" are taken (a camera card holds sidecar XML, thumbnails and the like),
hidden files and folders skipped. Every accepted file is a ``farm.client.CheckedFile``: the probe
the submit needs is done once, here.

Everything in this module blocks (file system, PyAV): the panel calls it from its background runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from farm.base.units import format_size
from farm.client import CheckedFile
from farm.domain.media import ACCEPTED_DEMUXERS, MediaInfo, NotAVideoError, ffmpeg_url, probe

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".qt",
        ".3gp",
        ".3g2",
        ".mj2",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".m2t",
        ".mpg",
        ".mpeg",
        ".m2v",
        ".vob",
        ".flv",
        ".mxf",
        ".ogv",
        ".wmv",
        ".asf",
        ".dv",
        ".nut",
        ".h264",
        ".264",
        ".h265",
        ".265",
        ".hevc",
        ".ivf",
    }
)
"""Extensions taken from inside a dropped folder (lower case). A file dropped directly is probed
whatever its name, so a video with an odd extension can still be added by naming it."""

_THUMB_PACKET_LIMIT = 400  # packets decoded after the seek before settling for the last frame
_THUMB_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str  # one line, from NotAVideoError, to show as "Refused: <reason>"


@dataclass
class Expanded:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # folders with no video, folders that could not be read


@dataclass
class Intake:
    accepted: list[CheckedFile] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_video_name(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def expand_paths(paths: Iterable[Path]) -> Expanded:
    """Files as given, folders replaced by the video files inside them (sorted, recursive).

    A path named twice (or a file inside a folder also dropped) is listed once.
    """
    result = Expanded()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.absolute()
        if key not in seen:
            seen.add(key)
            result.files.append(path)

    for path in map(Path, paths):
        if not path.is_dir():
            add(path)  # probing says what is wrong with a missing or odd file
            continue
        found = _walk_videos(path, result.notes)
        if not found:
            result.notes.append(f"No video files in folder {path.name or path}")
        for file in found:
            add(file)
    return result


def _walk_videos(folder: Path, notes: list[str]) -> list[Path]:
    def unreadable(exc: OSError) -> None:
        notes.append(f"Could not read folder {exc.filename}: {exc.strerror or exc}")

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            path = Path(root) / name
            if not _hidden(name) and is_video_name(path) and path.is_file():
                found.append(path)
    return found


def check(path: Path) -> CheckedFile | Refused:
    """Probe one file: accepted with its media info, or refused with the probe's one-line reason."""
    path = Path(path)
    try:
        return CheckedFile(path, probe(path))
    except NotAVideoError as exc:
        return Refused(path, str(exc))


def inspect(paths: Iterable[Path]) -> Intake:
    """``expand_paths`` then ``check`` each file."""
    expanded = expand_paths(paths)
    intake = Intake(notes=list(expanded.notes))
    for path in expanded.files:
        outcome = check(path)
        if isinstance(outcome, Refused):
            intake.refused.append(outcome)
        else:
            intake.accepted.append(outcome)
    return intake


# -- words for a file ----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``1:02:03``; whole seconds, rounded."""
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(info: MediaInfo) -> str:
    """One line: ``0:02 · 320×240 · h264 / aac · 1.2 MB`` (``no audio`` when there is none)."""
    audio = info.audio_codec or "no audio"
    return (
        f"{format_duration(info.duration)} · {info.width}×{info.height} · "
        f"{info.video_codec} / {audio} · {format_size(info.size)}"
    )


# -- thumbnails ----------------------------------------------------------------------------------


def thumbnail(path: Path, max_size: tuple[int, int] = (160, 90)) -> tuple[int, int, bytes]:
    """A frame about 10 % into the clip, as displayed (rotation applied), scaled to fit ``max_size``.

    Returns ``(width, height, rgb)`` with ``rgb`` packed RGB888 rows (``width * 3`` bytes each).
    Opens the file with the same guard as ``farm.domain.media.probe`` (local file, media demuxers only).
    """
    import av

    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(ACCEPTED_DEMUXERS)}
    with av.open(ffmpeg_url(path), container_options=options, timeout=_THUMB_TIMEOUT_S) as container:
        stream = next(
            (
                s
                for s in container.streams.video
                if not s.disposition & (av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails)
            ),
            None,
        )
        if stream is None:
            raise NotAVideoError(f"{Path(path).name} has no video stream")
        frame = _frame_near(container, stream, _seconds(container, stream) * 0.10)
        if frame is None:
            raise NotAVideoError(f"{Path(path).name}: no frame of its video can be decoded")

        rotation = round((frame.rotation or 0) / 90) * 90 % 360
        shown_w, shown_h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
        scale = min(max_size[0] / shown_w, max_size[1] / shown_h, 1.0)
        out_w, out_h = max(1, round(shown_w * scale)), max(1, round(shown_h * scale))
        coded_w, coded_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
        rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24")
        data = _packed_rows(rgb.planes[0], coded_w, coded_h)
    return _rotate(coded_w, coded_h, data, rotation)


def _seconds(container, stream) -> float:
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def _frame_near(container, stream, target: float):
    """The first frame at or after ``target`` seconds (or the last one decoded, for a short clip)."""
    import av

    if target > 0 and stream.time_base:
        try:
            container.seek(int(Fraction(target) / stream.time_base), stream=stream, backward=True)
        except av.error.FFmpegError:
            container.seek(0)  # raw streams cannot seek: decode from the start
    last = None
    for count, packet in enumerate(container.demux(stream)):
        if count > _THUMB_PACKET_LIMIT:
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        for frame in frames:
            last = frame
            if frame.time is None or frame.time >= target:
                return frame
    return last


def _packed_rows(plane, width: int, height: int) -> bytes:
    """The plane's pixels without the decoder's line padding."""
    row = width * 3
    data = bytes(plane)
    if plane.line_size == row:
        return data[: row * height]
    return b"".join(data[y * plane.line_size : y * plane.line_size + row] for y in range(height))


def _rotate(width: int, height: int, data: bytes, rotation: int) -> tuple[int, int, bytes]:
    """Turn packed RGB rows counter-clockwise by ``rotation`` degrees (PyAV's ``frame.rotation``)."""
    if rotation == 0:
        return width, height, data
    pixels = [data[i : i + 3] for i in range(0, width * height * 3, 3)]
    if rotation == 180:
        return width, height, b"".join(reversed(pixels))
    # 90: the top row becomes the left column (read bottom-up); 270: the right column.
    out: list[bytes] = []
    for y in range(width):  # rows of the turned image
        x = width - 1 - y if rotation == 90 else y
        column = [pixels[row * width + x] for row in range(height)]
        out.extend(column if rotation == 90 else reversed(column))
    return height, width, b"".join(out)
