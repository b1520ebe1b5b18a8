"""What a drop turns into, without Qt: folders expanded, files probed or refused, thumbnails."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from app.intake import (
    Refused,
    check,
    describe,
    expand_paths,
    format_duration,
    inspect,
    thumbnail,
)
from farm.base.units import format_rate, format_size
from farm.client import CheckedFile
from farm.domain.media import NotAVideoError, find_ffmpeg, probe
from tests.clips import rotated


def test_folders_expand_recursively_to_videos_skipping_hidden(tmp_path, clip):
    shoot = tmp_path / "shoot"
    (shoot / "day2" / "cam b").mkdir(parents=True)
    (shoot / ".cache").mkdir()
    shutil.copy(clip, shoot / "b.MOV")  # the extension is what counts, in any case
    shutil.copy(clip, shoot / "a.mp4")
    shutil.copy(clip, shoot / "day2" / "cam b" / "c.mkv")
    shutil.copy(clip, shoot / ".hidden.mp4")
    shutil.copy(clip, shoot / ".cache" / "d.mp4")
    (shoot / "notes.txt").write_text("not a video")
    (shoot / "a.xml").write_text("<sidecar/>")
    text = tmp_path / "readme.txt"
    text.write_text("dropped on purpose")

    expanded = expand_paths([shoot, text, shoot / "a.mp4"])

    assert [p.relative_to(tmp_path).as_posix() for p in expanded.files] == [
        "shoot/a.mp4",
        "shoot/b.MOV",
        "shoot/day2/cam b/c.mkv",
        "readme.txt",
    ]
    assert expanded.notes == []


def test_a_folder_without_videos_is_noted(tmp_path):
    empty = tmp_path / "stills"
    empty.mkdir()
    (empty / "frame.png").write_bytes(b"\x89PNG")
    expanded = expand_paths([empty])
    assert expanded.files == []
    assert expanded.notes == ["No video files in folder stills"]


def test_inspect_accepts_videos_and_refuses_the_rest_with_the_probe_reason(tmp_path, make_clip):
    video = make_clip(320, 240, 1.0)
    silent = make_clip(320, 240, 1.0, audio=False)
    text = tmp_path / "notes.txt"
    text.write_text("shot list: 1, 2, 3\n")
    missing = tmp_path / "gone.mp4"

    result = inspect([video, text, silent, missing])

    assert [item.path for item in result.accepted] == [video, silent]
    assert all(isinstance(item, CheckedFile) for item in result.accepted)
    assert result.accepted[0].info == probe(video)
    assert [r.path for r in result.refused] == [text, missing]
    with pytest.raises(NotAVideoError) as probed:
        probe(text)
    assert result.refused[0].reason == str(probed.value)
    assert result.refused[0].reason.startswith("notes.txt is not a ")
    assert result.refused[1].reason == "gone.mp4 does not exist"
    assert "\n" not in result.refused[0].reason


def test_check_returns_refused_for_an_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert check(empty) == Refused(empty, "empty.mp4 is empty")


def test_describe_names_duration_size_and_codecs(make_clip):
    info = probe(make_clip(320, 240, 2.0))
    assert describe(info).startswith("0:02 · 320×240 · h264 / aac · ")
    silent = probe(make_clip(320, 240, 1.0, audio=False))
    assert "h264 / no audio" in describe(silent)


@pytest.mark.parametrize("seconds, text", [(0.4, "0:00"), (7.6, "0:08"), (725, "12:05"), (3723, "1:02:03")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_size_and_rate():
    assert format_size(532) == "532 B"
    assert format_size(1_234_567) == "1.2 MB"
    assert format_size(3_400_000_000) == "3.4 GB"
    assert format_rate(12_345_678) == "12.3 MB/s"


def _pixel(thumb, x, y):
    width, _height, rgb = thumb
    offset = (y * width + x) * 3
    return tuple(rgb[offset : offset + 3])


def _is(color, pixel):
    reds = {"red": (255, 0, 0), "blue": (0, 0, 255)}[color]
    return all(abs(a - b) < 40 for a, b in zip(pixel, reds, strict=True))


@pytest.fixture(scope="module")
def red_over_blue(tmp_path_factory):
    """A 320x240 clip, red on top and blue below, and copies with display rotations."""
    folder = tmp_path_factory.mktemp("rotated")
    base = folder / "base.mp4"

    def ffmpeg(*args):
        subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)

    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=red:s=320x120:d=1[a];color=blue:s=320x120:d=1[b];[a][b]vstack",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        base,
    )
    clips = {0: base}
    for degrees in (90, -90, 180):
        clips[degrees] = folder / f"rot{degrees}.mp4"
        rotated(base, clips[degrees], degrees)
    return clips


def test_thumbnail_fits_the_box_and_keeps_the_aspect(clip):
    width, height, rgb = thumbnail(clip, (160, 90))
    assert (width, height) == (120, 90)
    assert len(rgb) == width * height * 3
    assert len(set(rgb)) > 10  # a picture, not a blank


def test_thumbnail_is_never_scaled_up(make_clip):
    width, height, _ = thumbnail(make_clip(64, 48, 1.0, audio=False), (160, 90))
    assert (width, height) == (64, 48)


@pytest.mark.parametrize(
    "degrees, size, top_left, bottom_right",
    [
        (0, (120, 90), "red", "blue"),
        (90, (68, 90), "red", "blue"),  # turned counter-clockwise: the top is now on the left
        (-90, (68, 90), "blue", "red"),
        (180, (120, 90), "blue", "red"),
    ],
)
def test_thumbnail_shows_the_frame_as_players_do(red_over_blue, degrees, size, top_left, bottom_right):
    thumb = thumbnail(red_over_blue[degrees], (160, 90))
    assert thumb[:2] == size
    assert _is(top_left, _pixel(thumb, 2, 2))
    assert _is(bottom_right, _pixel(thumb, size[0] - 3, size[1] - 3))


def test_thumbnail_is_taken_about_ten_percent_in(tmp_path):
    """Black for the first 0.3 s, white after: the first frame is black, 10 % into 4 s (0.4 s) is white."""
    path = tmp_path / "fade.mp4"
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=black:s=160x90:d=0.3:r=25[a];color=white:s=160x90:d=3.7:r=25[b];[a][b]concat=n=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "10",
            path,
        ],
        check=True,
    )
    assert _pixel(thumbnail(path, (160, 90)), 80, 45)[0] > 200  # the white part: not the first frame
