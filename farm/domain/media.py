"""Finding FFmpeg and probing media with PyAV.

``probe`` is the gate every input goes through, on the panel, in the CLI and again on the node,
because a file dropped by a user is untrusted. FFmpeg can read far more than videos: playlists
(HLS, ffconcat, DASH) make it open other files or URLs named inside them, so a "video" could make a
node read any local file and put it into an output. Two rules close that:

* only the ``file`` protocol, and the path is always given as ``file:/absolute/path`` so that a name
  such as ``concat:a|b`` or ``subfile,...:x`` is never read as a protocol;
* only demuxers of real media containers (``ACCEPTED_DEMUXERS``), enforced by libavformat itself
  through ``format_whitelist``, which it checks after probing the format and before the demuxer
  reads its header, i.e. before a playlist demuxer opens anything it references.

The node passes the same rules to the FFmpeg command (``input_guard_args``): the protocol whitelist
and the demuxer that ``probe`` found, forced with ``-f`` so FFmpeg does not guess again.

A real container can point elsewhere too: a QuickTime "reference movie" keeps its media in other
files, named in its data references (``dref``). FFmpeg's mov demuxer follows them only with
``enable_drefs``, which is off by default and which ``probe`` sets off explicitly; ``probe`` also
refuses such a movie outright, reading the boxes itself, so the node never runs FFmpeg on one.

Before FFmpeg opens a file, ``probe`` checks what the container says about its own size: an MP4/MOV
or Matroska file whose boxes or segment run past the end of the file was cut short (an interrupted
copy or upload). FFmpeg would transcode the part that is there and the output would fail its length
check on every retry, so it is refused up front with that reason.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from farm.base.errors import EXIT_USAGE, FarmError
from farm.base.settings import SettingsError
from farm.base.untrusted import printable

log = logging.getLogger(__name__)

FFMPEG_ENV = "ENCODEFLOW_FFMPEG"

MIN_FFMPEG_VERSION = (5, 1)
"""The oldest FFmpeg release EncodeFlow runs: the oldest one its tests run the node's commands with
(Debian 12's 5.1, on PATH in CI). The node's arguments need nothing newer; older releases are not
tested, so one on PATH is passed over for the bundled FFmpeg, and one named by ENCODEFLOW_FFMPEG
is refused."""

MAX_DIMENSION = 8192
"""The largest width or height EncodeFlow accepts (8K); bigger frames are refused at probe time."""

MAX_DURATION_S = 24 * 3600
"""The longest input EncodeFlow accepts. A header may claim any length, and a node holds its job's
lock for as long as FFmpeg runs; a day is longer than any real recording an editor hands in, and
anything longer is best split before it is submitted."""

# Demuxer names as libavformat spells them (one demuxer may have several, e.g. "mov,mp4,m4a,...").
ACCEPTED_DEMUXERS: tuple[str, ...] = (
    "mov",
    "mp4",
    "m4a",
    "3gp",
    "3g2",
    "mj2",  # QuickTime / ISO BMFF; external data refs stay off
    "matroska",
    "webm",
    "avi",
    "mpegts",
    "mpeg",  # MPEG program stream (.mpg, .vob)
    "flv",
    "mxf",
    "ogg",
    "asf",  # .wmv / .asf
    "dv",
    "nut",
    "h264",
    "hevc",
    "mpegvideo",
    "m4v",
    "ivf",  # raw elementary streams
)
# Raw elementary streams carry no duration; it is measured by reading their packets.
_RAW_STREAM_DEMUXERS = frozenset({"h264", "hevc", "mpegvideo", "m4v", "ivf"})

# Only used to word a refusal: single-file demuxers that never open anything else.
_IMAGE_DEMUXERS = (
    "png_pipe",
    "jpeg_pipe",
    "jpegls_pipe",
    "jpegxl_pipe",
    "webp_pipe",
    "gif",
    "gif_pipe",
    "apng",
    "bmp_pipe",
    "tiff_pipe",
    "qoi_pipe",
    "psd_pipe",
    "j2k_pipe",
    "dpx_pipe",
    "exr_pipe",
    "ppm_pipe",
    "pgm_pipe",
    "pbm_pipe",
    "pam_pipe",
)
_AUDIO_DEMUXERS = (
    "mp3",
    "wav",
    "w64",
    "flac",
    "aac",
    "ac3",
    "eac3",
    "aiff",
    "caf",
    "amr",
    "dts",
    "truehd",
    "wv",
    "ape",
    "tta",
    "au",
    "loas",
    "mlp",
)

FFMPEG_INPUT_GUARD: list[str] = ["-protocol_whitelist", "file"]
"""Input options the node puts before ``-i``; ``input_guard_args`` adds the probed demuxer.

``-enable_drefs`` is not among them: FFmpeg refuses an input option the forced demuxer does not
know, and its default (off) is what we want; tests/farm/test_hostile_inputs.py checks it stays off."""

_PROBE_TIMEOUT_S = 30.0
_MAX_PACKETS_TO_FIRST_FRAME = 600


class FFmpegNotFound(SettingsError):
    """No FFmpeg that EncodeFlow can use (a configuration error); ``str()`` is one line saying what to do."""


class NotAVideoError(FarmError, ValueError):
    """The file cannot be used as a transcode input; ``str()`` is one line to show the user."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class MediaInfo:
    container: str  # the demuxer's own name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    duration: float  # seconds
    width: int  # as displayed: rotation already applied
    height: int
    rotation: int  # display rotation, degrees counter-clockwise (0, 90, 180, 270), as -display_rotation
    video_codec: str
    audio_codec: str | None  # None: no audio stream
    fps: float  # average frame rate; 0.0 if unknown
    bit_rate: int | None  # bits per second, whole file
    size: int  # bytes

    @property
    def demuxer(self) -> str:
        """The demuxer's first name, the one to force with ``-f`` (``mov``, ``matroska``, ...)."""
        return self.container.split(",")[0]

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


# -- the FFmpeg binary -------------------------------------------------------------------------


def find_ffmpeg(configured: str | None = None) -> str:
    """The FFmpeg binary: the configured one (``ENCODEFLOW_FFMPEG`` or the settings), else the one on
    PATH if it is ``MIN_FFMPEG_VERSION`` or newer, else the one the ``imageio-ffmpeg`` wheel ships,
    so that a node needs nothing from the OS. A configured FFmpeg older than the minimum raises
    ``FFmpegNotFound``; an older one on PATH is passed over with one warning."""
    candidate = configured or os.environ.get(FFMPEG_ENV)
    if candidate:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if not path:
            raise FFmpegNotFound(f"FFmpeg not found at {candidate!r} (from ENCODEFLOW_FFMPEG or settings)")
        version = ffmpeg_version(path)
        if not _new_enough(path, version):
            raise FFmpegNotFound(
                f"FFmpeg {version} at {path} (from ENCODEFLOW_FFMPEG or settings) is older than "
                f"{_dotted(MIN_FFMPEG_VERSION)}, the oldest EncodeFlow runs; name a newer one, or unset "
                "it to use the bundled FFmpeg"
            )
        return path
    on_path = shutil.which("ffmpeg")
    passed_over = None  # why the one on PATH is not used
    if on_path:
        try:
            version = ffmpeg_version(on_path)
        except FFmpegNotFound as exc:
            passed_over = f"FFmpeg on PATH ({on_path}) does not run ({exc})"
        else:
            if _new_enough(on_path, version):
                return on_path
            passed_over = f"FFmpeg {version} on PATH ({on_path}) is older than {_dotted(MIN_FFMPEG_VERSION)}"
    try:
        import imageio_ffmpeg

        bundled: str = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFound(
            f"no FFmpeg {_dotted(MIN_FFMPEG_VERSION)} or newer: install one, set ENCODEFLOW_FFMPEG, "
            "or pip install imageio-ffmpeg"
        ) from exc
    if passed_over:
        _pass_over(f"{passed_over}; using the bundled FFmpeg {ffmpeg_version(bundled)} ({bundled}) instead")
    return bundled


def parse_ffmpeg_version(version: str) -> tuple[int, ...] | None:
    """The release in a version string: ``(5, 1, 6)`` from ``5.1.6-0+deb12u1``, ``(7, 1)`` from
    ``n7.1``; ``None`` for a build from git (``N-12345-g...``, dates), whose release is unknown."""
    match = re.match(r"n?(\d+)\.(\d+)(?:\.(\d+))?(?!\d)", version)
    if not match:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def _new_enough(path: str, version: str) -> bool:
    release = parse_ffmpeg_version(version)
    if release is None:
        _note_unknown_version(path, version)
        return True
    return release >= MIN_FFMPEG_VERSION


@functools.lru_cache(maxsize=8)
def _note_unknown_version(path: str, version: str) -> None:
    log.info(
        "FFmpeg at %s reports version %r, not a release number (a build from git?): taken as new enough", path, version
    )


@functools.lru_cache(maxsize=8)
def _pass_over(why: str) -> None:
    """One warning per binary and reason, however often FFmpeg is looked for."""
    log.warning("%s", why)


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


INTERESTING_ENCODERS = (
    "libx264",
    "libx265",
    "libvpx-vp9",
    "aac",
    "libopus",
    "h264_nvenc",
    "hevc_nvenc",
    "av1_nvenc",
    "h264_qsv",
    "hevc_qsv",
    "av1_qsv",
    "h264_vaapi",
    "hevc_vaapi",
    "vp9_vaapi",
    "av1_vaapi",
    "h264_videotoolbox",
    "hevc_videotoolbox",
    "h264_amf",
    "hevc_amf",
    "av1_amf",
)


def _ffmpeg_output(ffmpeg: str, *args: str) -> str:
    try:
        done = subprocess.run(
            [ffmpeg, "-hide_banner", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FFmpegNotFound(f"cannot run FFmpeg at {ffmpeg!r}: {exc}") from exc
    if done.returncode != 0:
        raise FFmpegNotFound(f"FFmpeg at {ffmpeg!r} failed: {done.stderr.strip()[-200:]}")
    return done.stdout


@functools.lru_cache(maxsize=8)
def ffmpeg_version(ffmpeg: str) -> str:
    """The version FFmpeg reports (``n9.0.2-17-g2a571b6068-20260930``, ``7.1``), cached per binary."""
    first = _ffmpeg_output(ffmpeg, "-version").partition("\n")[0]
    match = re.match(r"\S+ version (\S+)", first)
    return match.group(1) if match else first.strip()


def ffmpeg_encoders(ffmpeg: str) -> list[str]:
    """The encoders from ``INTERESTING_ENCODERS`` this binary has, cached per binary path.

    Hardware encoders listed here are compiled in; whether the machine has the device to run them
    is only known by trying one.
    """
    return list(_encoders(ffmpeg))


@functools.lru_cache(maxsize=8)
def _encoders(ffmpeg: str) -> tuple[str, ...]:
    names = set()
    for line in _ffmpeg_output(ffmpeg, "-encoders").splitlines():
        parts = line.split()
        # " V....D libx264  description": six flag characters, then the name.
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            names.add(parts[1])
    return tuple(name for name in INTERESTING_ENCODERS if name in names)


# -- probing -----------------------------------------------------------------------------------


def input_guard_args(info: MediaInfo) -> list[str]:
    """The input options for FFmpeg, before ``-i``: the same limits ``probe`` opened the file with."""
    return [*FFMPEG_INPUT_GUARD, "-f", info.demuxer]


def ffmpeg_url(path: str | os.PathLike[str]) -> str:
    """A path as an FFmpeg URL that can only mean a local file, whatever characters it holds."""
    return "file:" + os.path.abspath(os.fspath(path))


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """What the file is, or ``NotAVideoError`` with one line saying why it cannot be transcoded."""
    import av  # a heavy import, only for the processes that probe

    name = display_name(Path(path).name)
    size = _check_file(path, name)
    problem = _container_problem(path, size)
    if problem:
        raise NotAVideoError(f"{name} {problem}")
    url = ffmpeg_url(path)
    try:
        container = av.open(url, container_options=_guard_options(ACCEPTED_DEMUXERS), timeout=_PROBE_TIMEOUT_S)
    except av.error.FFmpegError as exc:
        raise NotAVideoError(_refusal(url, name, exc)) from None
    with container:
        info = _describe(container, name, size, url)
    if info.duration <= 0 and set(info.container.split(",")) & _RAW_STREAM_DEMUXERS:
        info = replace(info, duration=_measure_raw_duration(url, info))
    if info.duration <= 0:
        raise NotAVideoError(f"{name} has no duration (zero or unknown length)")
    if info.duration > MAX_DURATION_S:
        raise NotAVideoError(
            f"{name} lasts {_clock(info.duration)}; the longest video EncodeFlow accepts lasts "
            f"{_clock(MAX_DURATION_S)} (split it first)"
        )
    return info


def display_name(name: str) -> str:
    """A file name fit for a one-line message: control and invisible formatting characters (a
    newline, a right-to-left override) are shown escaped, as Python writes them (``\\n``)."""
    return printable(name)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _guard_options(demuxers: tuple[str, ...]) -> dict[str, str]:
    """libavformat options: read local files only, only with these demuxers, and never follow a
    movie's references to other files (mov's own options; other demuxers leave them unused)."""
    return {
        "protocol_whitelist": "file",
        "format_whitelist": ",".join(demuxers),
        "enable_drefs": "0",
        "use_absolute_path": "0",
    }


def _check_file(path: str | os.PathLike[str], name: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotAVideoError(f"{name} does not exist") from None
    except OSError as exc:
        raise NotAVideoError(f"{name} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block the probe, and a directory is not a file at all.
        raise NotAVideoError(f"{name} is not a regular file")
    if st.st_size == 0:
        raise NotAVideoError(f"{name} is empty")
    if not os.access(path, os.R_OK):
        raise NotAVideoError(f"{name} cannot be read: permission denied")
    return st.st_size


def _refusal(url: str, name: str, exc: Exception) -> str:
    """Word the refusal of a file that FFmpeg would not open under the whitelist."""
    kind = _reference_kind(_head(url))
    if kind:
        return f"{name} is {kind}, not a video; upload the video file itself"
    if isinstance(exc, EOFError):
        return f"{name} holds no video frames (it ends before the first one)"
    if getattr(exc, "errno", None) == errno.EINVAL:  # the whitelist's answer: probed, but not accepted
        if _opens_as(url, _IMAGE_DEMUXERS):
            return f"{name} is an image, not a video"
        if _opens_as(url, _AUDIO_DEMUXERS):
            return f"{name} has no video stream (it is an audio file)"
        return (
            f"{name} is not a media container EncodeFlow accepts; "
            "upload the video file itself (MP4, MOV, MKV, WebM, AVI, MPEG-TS, ...)"
        )
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"{name} is not a video FFmpeg can read: {reason}"


def _reference_kind(head: bytes) -> str | None:
    """Playlists and lists that point at other files, named for the refusal message."""
    if head.startswith(b"#EXTM3U") or b"#EXT-X-" in head:
        return "an HLS/M3U playlist"
    if head.startswith(b"ffconcat"):
        return "an FFmpeg concat list"
    if b"<MPD" in head:
        return "a DASH manifest"
    if head.startswith(b"v=0") and re.search(rb"^m=", head, re.MULTILINE):
        return "an SDP session description (it points at network streams)"
    return None


def _opens_as(url: str, demuxers: tuple[str, ...]) -> bool:
    import av

    try:
        with av.open(url, container_options=_guard_options(demuxers), timeout=_PROBE_TIMEOUT_S):
            return True
    except av.error.FFmpegError:
        return False


def _head(url: str) -> bytes:
    try:
        with open(url.removeprefix("file:"), "rb") as fh:
            return fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return b""


def _describe(container: Any, name: str, size: int, url: str) -> MediaInfo:
    import av

    demuxer_names = set(container.format.name.split(","))
    if not demuxer_names & set(ACCEPTED_DEMUXERS):  # libavformat enforced it; this keeps it so
        raise NotAVideoError(f"{name} is in a format EncodeFlow does not accept ({container.format.name})")

    videos = [
        s
        for s in container.streams.video
        if not s.disposition & (av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails)
    ]
    if not videos:
        raise NotAVideoError(f"{name} has no video stream")
    if all(s.disposition & av.stream.Disposition.still_image for s in videos):
        raise NotAVideoError(f"{name} is an image, not a video")
    video = videos[0]
    audio = container.streams.audio[0] if container.streams.audio else None

    coded_w, coded_h = video.codec_context.width, video.codec_context.height
    if not coded_w or not coded_h:
        # libavcodec drops a size it cannot hold in memory (16384x16384 is one) and only says so
        # in its log: read the size from there, so that the refusal names the real reason.
        coded_w, coded_h = _rejected_frame_size(url)
        if not coded_w:
            raise NotAVideoError(f"{name} is not a video FFmpeg can read: its frame size is unknown")
    if max(coded_w, coded_h) > MAX_DIMENSION:
        raise NotAVideoError(
            f"{name} is {coded_w}x{coded_h}; the largest frame EncodeFlow accepts is {MAX_DIMENSION}x{MAX_DIMENSION}"
        )

    duration = _duration(container, video)
    if duration <= 0 and not demuxer_names & _RAW_STREAM_DEMUXERS:  # those are measured in probe()
        raise NotAVideoError(f"{name} has no duration (zero or unknown length)")

    # The display matrix is stream side data, which PyAV exposes on decoded frames only; decoding
    # the first frame also proves the video can be decoded at all.
    first = _first_frame(container, video)
    if first is None:
        raise NotAVideoError(f"{name} is not a video FFmpeg can read: no frame of its video can be decoded")
    rotation = round(first.rotation / 90) * 90 % 360
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)

    return MediaInfo(
        container=container.format.name,
        duration=duration,
        width=width,
        height=height,
        rotation=rotation,
        video_codec=video.codec_context.name,
        audio_codec=audio.codec_context.name if audio is not None else None,
        fps=_fps(video, raw=bool(demuxer_names & _RAW_STREAM_DEMUXERS)),
        bit_rate=container.bit_rate or None,
        size=size,
    )


_LOG_LEVEL_LOCK = threading.Lock()


def _rejected_frame_size(url: str) -> tuple[int, int]:
    """The frame size libavcodec refused as invalid while opening ``url``, else ``(0, 0)``."""
    import av
    import av.logging

    with _LOG_LEVEL_LOCK:
        previous = av.logging.get_level()
        if previous is None or previous < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture() as logs:
                try:
                    av.open(url, container_options=_guard_options(ACCEPTED_DEMUXERS), timeout=_PROBE_TIMEOUT_S).close()
                except av.error.FFmpegError:
                    pass
        finally:
            av.logging.set_level(previous)
    for _level, _name, message in logs:
        found = re.search(r"Picture size (\d+)x(\d+) is invalid", message)
        if found:
            return int(found.group(1)), int(found.group(2))
    return 0, 0


def _rate(rate: Fraction | None) -> float:
    return float(rate) if rate else 0.0


def _fps(video: Any, raw: bool) -> float:
    if raw:  # the raw demuxers' average_rate is their 25 fps default; the codec's timing is real
        return _rate(video.codec_context.framerate) or _rate(video.guessed_rate) or _rate(video.average_rate)
    return _rate(video.average_rate) or _rate(video.guessed_rate)


def _duration(container: Any, video: Any) -> float:
    """Seconds, 0.0 when neither the container nor the video stream knows."""
    if container.duration and container.duration > 0:
        return float(container.duration / 1_000_000)  # AV_TIME_BASE
    if video.duration and video.time_base:
        return float(video.duration * video.time_base)
    return 0.0


def _measure_raw_duration(url: str, info: MediaInfo) -> float:
    """A raw elementary stream has no header to say how long it is: add up its frames."""
    import av

    frames, timed = 0, Fraction(0)
    with av.open(url, format=info.demuxer, container_options=_guard_options(ACCEPTED_DEMUXERS)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                frames += 1
                if packet.duration and packet.time_base:
                    timed += packet.duration * packet.time_base
    if timed > 0:
        return float(timed)
    return frames / info.fps if info.fps else 0.0


def _first_frame(container: Any, video: Any) -> Any:
    import av

    for count, packet in enumerate(container.demux(video)):
        if count > _MAX_PACKETS_TO_FIRST_FRAME:
            return None
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue  # a damaged packet at the start; the decoder may recover on the next keyframe
        if frames:
            return frames[0]
    return None


# -- what a container says about itself ----------------------------------------------------------
#
# Read with plain file I/O, before FFmpeg sees the file: only box and element headers, by seeking.

_ISO_TOP_LEVEL = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"sidx", b"moof"})
_ISO_PATH_TO_DREF = (b"trak", b"mdia", b"minf", b"dinf", b"dref")
_FOURCC = re.compile(rb"[\x20-\x7e\xa9]{4}")
_MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = b"\x18\x53\x80\x67"
_MAX_DREF_BYTES = 1 << 16


def _container_problem(path: str | os.PathLike[str], size: int) -> str | None:
    """Why an MP4/MOV or Matroska file cannot be used as it is (cut short, references other
    files), as the end of a sentence that starts with its name; ``None`` when nothing is wrong
    or the file is of another kind (FFmpeg judges those)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head[:4] == _MATROSKA_MAGIC:
                return _matroska_problem(fh, size)
            if head[4:8] in _ISO_TOP_LEVEL:
                return _iso_problem(fh, size)
    except OSError:
        return None  # FFmpeg's open says what is wrong
    return None


def _truncated(needed: int, size: int) -> str:
    return (
        f"is truncated: its structure needs {needed:,} bytes but the file has {size:,} "
        "(an interrupted copy or upload?); submit the complete file"
    )


def _iso_boxes(fh: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload start, box end)`` of each box between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        fh.seek(pos)
        header = fh.read(16)
        if len(header) < 8:
            return
        box_size, kind = struct.unpack(">I4s", header[:8])
        header_size = 8
        if box_size == 1 and len(header) == 16:
            box_size, header_size = struct.unpack(">Q", header[8:16])[0], 16
        elif box_size == 0:  # "to the end of the file"
            box_size = end - pos
        if box_size < header_size or not _FOURCC.fullmatch(kind):
            return  # not a box (padding or junk after the last one): FFmpeg decides what it makes of it
        yield kind, pos + header_size, pos + box_size
        pos += box_size


def _iso_problem(fh: BinaryIO, size: int) -> str | None:
    for kind, payload, end in _iso_boxes(fh, 0, size):
        if end > size:
            return _truncated(end, size)
        if kind == b"moov" and _has_external_references(fh, payload, end):
            return (
                "is a reference movie: its media lives in other files, which EncodeFlow never "
                "opens; export a self-contained movie and submit that"
            )
    return None


def _has_external_references(fh: BinaryIO, start: int, end: int, depth: int = 0) -> bool:
    """Whether any track's data reference names another file or URL (``moov/trak/.../dref``)."""
    wanted = _ISO_PATH_TO_DREF[depth]
    for kind, payload, box_end in _iso_boxes(fh, start, end):
        if kind != wanted:
            continue
        if kind != b"dref":
            if _has_external_references(fh, payload, box_end, depth + 1):
                return True
            continue
        fh.seek(payload)
        data = fh.read(min(box_end - payload, _MAX_DREF_BYTES))
        pos = 8  # version and flags, entry count
        while pos + 12 <= len(data):
            entry_size, _entry_type, flags = struct.unpack(">I4sI", data[pos : pos + 12])
            # Flag 1: "the media data is in this same file". Anything else with a body names a place.
            if not flags & 1 and entry_size > 12:
                return True
            if entry_size < 12:
                break
            pos += entry_size
    return False


def _ebml_number(fh: BinaryIO) -> tuple[int | None, int] | None:
    """An EBML variable-size number: ``(value, bytes read)``; value ``None`` means "unknown"."""
    first = fh.read(1)
    if not first or first[0] == 0:
        return None
    length = 8 - first[0].bit_length() + 1
    rest = fh.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first[0] & (0xFF >> length)
    for byte in rest:
        value = value << 8 | byte
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _matroska_problem(fh: BinaryIO, size: int) -> str | None:
    fh.seek(4)
    header = _ebml_number(fh)
    if header is None or header[0] is None:
        return None
    segment_at = 4 + header[1] + header[0]
    fh.seek(segment_at)
    if fh.read(4) != _MATROSKA_SEGMENT:
        return None
    segment = _ebml_number(fh)
    if segment is None or segment[0] is None:  # unknown size: a live recording, fine
        return None
    end = segment_at + 4 + segment[1] + segment[0]
    return _truncated(end, size) if end > size else None
