"""The FFmpeg command for one output: always an argument list, never a shell string.

The size rule (docs/queue-protocol.md, `outputConfig.resolution`): the resolution names the short side of the frame,
so a portrait phone clip at 720p comes out 720 wide; the other side follows the source's aspect
ratio, rounded to even (the encoders need even sizes for 4:2:0); and a source is never upscaled
unless the config says so. Sizes are in display orientation: FFmpeg rotates the frames as the
source's display matrix says before our scale filter runs (its default ``-autorotate``).
"""

from __future__ import annotations

import os

from farm.domain.jobspec import OutputConfig
from farm.domain.media import MediaInfo, ffmpeg_url, input_guard_args

# format -> (muxer, video options, audio options, muxer options)
_ENCODING: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "mp4": (
        "mp4",
        ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"],
        ["-c:a", "aac", "-b:a", "128k"],
        ["-movflags", "+faststart"],
    ),
    "webm": (
        "webm",
        # Constant quality (-b:v 0 -crf); "good" + cpu-used 5 + row-mt is VP9's fast VOD setting.
        ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "33", "-deadline", "good", "-cpu-used", "5", "-row-mt", "1"],
        ["-c:a", "libopus", "-b:a", "96k"],
        [],
    ),
    "hevc": (
        "mp4",
        # hvc1 (parameter sets in the sample entry) is the tag Apple players require.
        ["-c:v", "libx265", "-preset", "fast", "-crf", "28", "-tag:v", "hvc1", "-x265-params", "log-level=error"],
        ["-c:a", "aac", "-b:a", "128k"],
        ["-movflags", "+faststart"],
    ),
}


def _even_floor(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _even_round(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def target_dimensions(src_w: int, src_h: int, config: OutputConfig) -> tuple[int, int]:
    """The output size for a source of ``src_w`` x ``src_h`` (display orientation), always even."""
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"invalid source size {src_w}x{src_h}")
    short = min(src_w, src_h)
    target = config.short_side
    if short <= target and not config.allow_upscale:
        # Keep the source's size; drop an odd last pixel rather than stretch the frame by one.
        return _even_floor(src_w), _even_floor(src_h)
    scale = target / short
    if src_w <= src_h:
        return target, _even_round(src_h * scale)
    return _even_round(src_w * scale), target


def build_args(
    ffmpeg: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: OutputConfig,
    info: MediaInfo,
    *,
    threads: int | None = None,
) -> list[str]:
    """The full FFmpeg command line for ``config``, progress on stdout (``-progress pipe:1``).

    ``threads`` (``farm-node --threads``) caps the stages that do most of the work, so that a job
    uses about that many cores: the encoder's ``-threads``, the filters' ``-filter_threads`` and
    x265's own thread pool (``pools``), which ``-threads`` does not reach. The decoder keeps FFmpeg's
    own choice (it is a small part of a transcode). None: FFmpeg's own choice everywhere (about one
    thread per core in each stage)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    muxer, video, audio, mux_options = _ENCODING[config.format]
    if threads is not None and "-x265-params" in video:
        at = video.index("-x265-params") + 1
        video = [*video[:at], f"{video[at]}:pools={threads}", *video[at + 1 :]]
    encoder_threads = ["-threads", str(threads)] if threads is not None else []
    width, height = target_dimensions(info.width, info.height, config)
    args = [
        os.fspath(ffmpeg),
        "-hide_banner",
        "-nostdin",
        "-y",
        # "error" keeps the log short, yet a failure still says why in its last lines.
        "-loglevel",
        "error",
        "-progress",
        "pipe:1",
        "-nostats",
        *(["-filter_threads", str(threads)] if threads is not None else []),
        *input_guard_args(info),
        "-i",
        ffmpeg_url(input_path),
        "-map",
        "0:v:0",
    ]
    with_audio = config.include_audio and info.has_audio
    if with_audio:
        args += ["-map", "0:a:0?"]
    args += ["-vf", f"scale={width}:{height},format=yuv420p", *video]
    args += audio if with_audio else ["-an"]
    args += encoder_threads
    args += [*mux_options, "-f", muxer, ffmpeg_url(output_path)]
    return args
