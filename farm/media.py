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
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

FFMPEG_ENV = "ENCODEFLOW_FFMPEG"

MAX_DIMENSION = 8192
"""The largest width or height EncodeFlow accepts (8K); bigger frames are refused at probe time."""

# Demuxer names as libavformat spells them (one demuxer may have several, e.g. "mov,mp4,m4a,...").
ACCEPTED_DEMUXERS: tuple[str, ...] = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2",  # QuickTime / ISO BMFF; external data refs stay off
    "matroska", "webm",
    "avi",
    "mpegts",
    "mpeg",  # MPEG program stream (.mpg, .vob)
    "flv",
    "mxf",
    "ogg",
    "asf",  # .wmv / .asf
    "dv",
    "nut",
    "h264", "hevc", "mpegvideo", "m4v", "ivf",  # raw elementary streams
)
# Raw elementary streams carry no duration; it is measured by reading their packets.
_RAW_STREAM_DEMUXERS = frozenset({"h264", "hevc", "mpegvideo", "m4v", "ivf"})

# Only used to word a refusal: single-file demuxers that never open anything else.
_IMAGE_DEMUXERS = (
    "png_pipe", "jpeg_pipe", "jpegls_pipe", "jpegxl_pipe", "webp_pipe", "gif", "gif_pipe", "apng",
    "bmp_pipe", "tiff_pipe", "qoi_pipe", "psd_pipe", "j2k_pipe", "dpx_pipe", "exr_pipe",
    "ppm_pipe", "pgm_pipe", "pbm_pipe", "pam_pipe",
)
_AUDIO_DEMUXERS = (
    "mp3", "wav", "w64", "flac", "aac", "ac3", "eac3", "aiff", "caf", "amr", "dts", "truehd",
    "wv", "ape", "tta", "au", "loas", "mlp",
)

FFMPEG_INPUT_GUARD: list[str] = ["-protocol_whitelist", "file"]
"""Input options the node puts before ``-i``; ``input_guard_args`` adds the probed demuxer."""

_PROBE_TIMEOUT_S = 30.0
_MAX_PACKETS_TO_FIRST_FRAME = 600


class FFmpegNotFound(RuntimeError):
    pass


class NotAVideoError(ValueError):
    """The file cannot be used as a transcode input; ``str()`` is one line to show the user."""


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
    """The FFmpeg binary: the configured one, ``ENCODEFLOW_FFMPEG``, the one on PATH, else the one
    the ``imageio-ffmpeg`` wheel ships, so that a node needs nothing from the OS."""
    candidate = configured or os.environ.get(FFMPEG_ENV)
    if candidate:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if not path:
            raise FFmpegNotFound(f"FFmpeg not found at {candidate!r} (from ENCODEFLOW_FFMPEG or settings)")
        return path
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFound(
            "no FFmpeg: install ffmpeg, set ENCODEFLOW_FFMPEG, or pip install imageio-ffmpeg"
        ) from exc


INTERESTING_ENCODERS = (
    "libx264", "libx265", "libvpx-vp9", "aac", "libopus",
    "h264_nvenc", "hevc_nvenc", "av1_nvenc",
    "h264_qsv", "hevc_qsv", "av1_qsv",
    "h264_vaapi", "hevc_vaapi", "vp9_vaapi", "av1_vaapi",
    "h264_videotoolbox", "hevc_videotoolbox",
    "h264_amf", "hevc_amf", "av1_amf",
)


def _ffmpeg_output(ffmpeg: str, *args: str) -> str:
    try:
        done = subprocess.run(
            [ffmpeg, "-hide_banner", *args],
            capture_output=True, text=True, errors="replace", timeout=30, stdin=subprocess.DEVNULL,
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

    name = Path(path).name
    size = _check_file(path, name)
    url = ffmpeg_url(path)
    try:
        container = av.open(url, container_options=_guard_options(ACCEPTED_DEMUXERS), timeout=_PROBE_TIMEOUT_S)
    except av.error.FFmpegError as exc:
        raise NotAVideoError(_refusal(url, name, exc)) from None
    with container:
        info = _describe(container, name, size)
    if info.duration <= 0 and set(info.container.split(",")) & _RAW_STREAM_DEMUXERS:
        info = replace(info, duration=_measure_raw_duration(url, info))
    if info.duration <= 0:
        raise NotAVideoError(f"{name} has no duration (zero or unknown length)")
    return info


def _guard_options(demuxers: tuple[str, ...]) -> dict[str, str]:
    """libavformat options: read local files only, and only with these demuxers."""
    return {"protocol_whitelist": "file", "format_whitelist": ",".join(demuxers)}


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


def _describe(container, name: str, size: int) -> MediaInfo:
    import av

    demuxer_names = set(container.format.name.split(","))
    if not demuxer_names & set(ACCEPTED_DEMUXERS):  # libavformat enforced it; this keeps it so
        raise NotAVideoError(f"{name} is in a format EncodeFlow does not accept ({container.format.name})")

    videos = [
        s for s in container.streams.video
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


def _rate(rate: Fraction | None) -> float:
    return float(rate) if rate else 0.0


def _fps(video, raw: bool) -> float:
    if raw:  # the raw demuxers' average_rate is their 25 fps default; the codec's timing is real
        return _rate(video.codec_context.framerate) or _rate(video.guessed_rate) or _rate(video.average_rate)
    return _rate(video.average_rate) or _rate(video.guessed_rate)


def _duration(container, video) -> float:
    """Seconds, 0.0 when neither the container nor the video stream knows."""
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
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


def _first_frame(container, video):
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
