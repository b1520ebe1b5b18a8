"""The FFmpeg command line: the size rule, the guard before -i, and per-format encoder options."""

from __future__ import annotations

import os

import pytest

from farm.domain.jobspec import OutputConfig
from farm.domain.media import MediaInfo
from farm_node.ffmpeg_args import build_args, target_dimensions

FFMPEG = "/opt/ffmpeg/bin/ffmpeg"


def info(width=1920, height=1080, audio="aac", container="mov,mp4,m4a,3gp,3g2,mj2") -> MediaInfo:
    return MediaInfo(
        container=container,
        duration=10.0,
        width=width,
        height=height,
        rotation=0,
        video_codec="h264",
        audio_codec=audio,
        fps=30.0,
        bit_rate=5_000_000,
        size=6_250_000,
    )


@pytest.mark.parametrize(
    "source, resolution, upscale, expected",
    [
        ((1920, 1080), "1080p", False, (1920, 1080)),
        ((1920, 1080), "720p", False, (1280, 720)),
        ((1920, 1080), "480p", False, (854, 480)),  # 853.33 -> nearest even
        ((1920, 1080), "360p", False, (640, 360)),
        ((1080, 1920), "720p", False, (720, 1280)),  # portrait: 720 is the width
        ((1080, 1920), "480p", False, (480, 854)),
        ((3840, 2160), "1080p", False, (1920, 1080)),
        ((1440, 1080), "720p", False, (960, 720)),  # 4:3
        ((2560, 1080), "360p", False, (854, 360)),  # 21:9
        ((1000, 1000), "480p", False, (480, 480)),
        ((1279, 719), "480p", False, (854, 480)),  # odd source
        ((1281, 721), "720p", False, (1280, 720)),  # short side 721 > 720: scaled, even
        ((320, 240), "720p", False, (320, 240)),  # never upscaled unless asked
        ((321, 241), "720p", False, (320, 240)),  # kept, but made even
        ((1280, 720), "1080p", False, (1280, 720)),
        ((320, 240), "720p", True, (960, 720)),
        ((240, 320), "720p", True, (720, 960)),
        ((1280, 720), "1080p", True, (1920, 1080)),
    ],
)
def test_target_dimensions(source, resolution, upscale, expected):
    result = target_dimensions(*source, OutputConfig(resolution, allow_upscale=upscale))
    assert result == expected
    assert all(side % 2 == 0 for side in result)


def test_target_dimensions_rejects_nonsense():
    with pytest.raises(ValueError):
        target_dimensions(0, 1080, OutputConfig())


def test_args_are_a_list_with_no_shell(tmp_path):
    source = tmp_path / "holiday; rm -rf ~ $(reboot) `x`.mov"
    args = build_args(FFMPEG, source, tmp_path / "out.mp4", OutputConfig("720p", "mp4"), info())
    assert isinstance(args, list) and all(isinstance(arg, str) for arg in args)
    assert args[0] == FFMPEG  # the binary itself, not sh -c
    # The whole name is one argument, as a file: URL FFmpeg cannot read as another protocol.
    assert args[args.index("-i") + 1] == "file:" + os.path.abspath(source)
    assert args[-1] == "file:" + os.path.abspath(tmp_path / "out.mp4")  # output last
    for flag in ("-hide_banner", "-nostdin", "-y", "-nostats"):
        assert flag in args
    assert args[args.index("-progress") + 1] == "pipe:1"
    assert args[args.index("-loglevel") + 1] == "error"


def test_input_guard_comes_before_the_input():
    args = build_args(FFMPEG, "in.mkv", "out.webm", OutputConfig("720p", "webm"), info(container="matroska,webm"))
    i = args.index("-i")
    assert args[i - 4 : i] == ["-protocol_whitelist", "file", "-f", "matroska"]


def test_streams_and_scale():
    args = build_args(FFMPEG, "in.mp4", "out.mp4", OutputConfig("720p", "mp4"), info(1080, 1920))
    assert args[args.index("-vf") + 1] == "scale=720:1280,format=yuv420p"
    assert "0:v:0" in args and "0:a:0?" in args and "-an" not in args


def test_no_audio_when_not_asked():
    args = build_args(FFMPEG, "in.mp4", "out.mp4", OutputConfig("720p", "mp4", include_audio=False), info())
    assert "-an" in args
    assert "0:a:0?" not in args and "-c:a" not in args


def test_no_audio_when_the_source_has_none():
    args = build_args(FFMPEG, "in.mp4", "out.mp4", OutputConfig("720p", "mp4"), info(audio=None))
    assert "-an" in args and "-c:a" not in args


def _option(args, flag):
    return args[args.index(flag) + 1]


def test_mp4():
    args = build_args(FFMPEG, "in.mp4", "out.mp4", OutputConfig("1080p", "mp4"), info())
    assert (_option(args, "-c:v"), _option(args, "-preset"), _option(args, "-crf")) == ("libx264", "veryfast", "23")
    assert (_option(args, "-c:a"), _option(args, "-b:a")) == ("aac", "128k")
    assert _option(args, "-movflags") == "+faststart"
    assert args[-3:-1] == ["-f", "mp4"]


def test_webm():
    args = build_args(FFMPEG, "in.mp4", "out.webm", OutputConfig("720p", "webm"), info())
    assert _option(args, "-c:v") == "libvpx-vp9"
    assert (_option(args, "-b:v"), _option(args, "-crf")) == ("0", "33")  # constant quality
    assert _option(args, "-row-mt") == "1" and _option(args, "-deadline") == "good"
    assert _option(args, "-c:a") == "libopus"
    assert "-movflags" not in args
    assert args[-3:-1] == ["-f", "webm"]


def test_hevc():
    args = build_args(FFMPEG, "in.mp4", "out.mp4", OutputConfig("1080p", "hevc"), info())
    assert (_option(args, "-c:v"), _option(args, "-preset"), _option(args, "-crf")) == ("libx265", "fast", "28")
    assert _option(args, "-tag:v") == "hvc1"
    assert _option(args, "-c:a") == "aac"
    assert _option(args, "-movflags") == "+faststart"
    assert args[-3:-1] == ["-f", "mp4"]


def test_threads_only_when_given():
    config = OutputConfig("720p", "mp4")
    assert "-threads" not in build_args(FFMPEG, "in.mp4", "out.mp4", config, info())
    args = build_args(FFMPEG, "in.mp4", "out.mp4", config, info(), threads=4)
    assert _option(args, "-threads") == "4"
    assert args.index("-threads") > args.index("-i")  # an encoder option, not an input one
