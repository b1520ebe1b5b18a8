"""Probing real files with PyAV: what a good clip reports, and every kind of file that is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest

from farm.domain import media
from farm.domain.media import (
    FFMPEG_INPUT_GUARD,
    MAX_DIMENSION,
    MediaInfo,
    NotAVideoError,
    ffmpeg_encoders,
    ffmpeg_version,
    find_ffmpeg,
    input_guard_args,
    probe,
)
from tests.clips import ffmpeg_claiming, rotated


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


# -- a good clip -------------------------------------------------------------------------------


def test_probe_clip_with_audio(clip):
    info = probe(clip)
    assert isinstance(info, MediaInfo)
    assert "mp4" in info.container.split(",") and info.demuxer == "mov"
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert info.video_codec == "h264"
    assert info.audio_codec == "aac" and info.has_audio
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert info.fps == pytest.approx(25.0)
    assert info.size == clip.stat().st_size
    assert info.bit_rate and info.bit_rate > 0


def test_probe_clip_without_audio(make_clip):
    info = probe(make_clip(320, 240, 1.0, audio=False))
    assert info.audio_codec is None and not info.has_audio
    assert info.duration == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("degrees, expected", [(90, (240, 320)), (-90, (240, 320)), (180, (320, 240))])
def test_rotation_gives_display_orientation(make_clip, tmp_path, degrees, expected):
    """A phone records landscape frames and a display matrix; probe reports what a player shows."""
    info = probe(rotated(make_clip(320, 240, 1.0), tmp_path / f"phone_{degrees}.mp4", degrees))
    assert (info.width, info.height) == expected
    assert info.rotation == degrees % 360


def test_other_real_containers(make_clip, tmp_path):
    source = make_clip(320, 240, 1.0)
    mkv, ts = tmp_path / "clip.mkv", tmp_path / "clip.ts"
    ffmpeg("-i", source, "-c", "copy", mkv)
    ffmpeg("-i", source, "-c", "copy", ts)
    assert probe(mkv).demuxer == "matroska"
    assert probe(ts).demuxer == "mpegts"


def test_raw_h264_stream_duration_is_measured(make_clip, tmp_path):
    raw = tmp_path / "clip.h264"
    ffmpeg("-i", make_clip(320, 240, 1.0, audio=False, fps=10), "-c", "copy", "-f", "h264", raw)
    info = probe(raw)
    assert info.container == "h264"
    assert info.fps == pytest.approx(10.0)  # from the stream's timing, not the demuxer's 25 default
    assert info.duration == pytest.approx(1.0, abs=0.1)


def test_names_that_look_like_protocols_are_files(clip, tmp_path, monkeypatch):
    """FFmpeg reads ``concat:a|b`` as a protocol; probe always hands it ``file:/abs/path``."""
    odd = tmp_path / "concat:holiday|clip.mp4"
    shutil.copy(clip, odd)
    monkeypatch.chdir(tmp_path)
    assert probe("concat:holiday|clip.mp4").video_codec == "h264"


def test_input_guard(clip):
    info = probe(clip)
    assert FFMPEG_INPUT_GUARD == ["-protocol_whitelist", "file"]
    assert input_guard_args(info) == ["-protocol_whitelist", "file", "-f", "mov"]


# -- refusals ----------------------------------------------------------------------------------


def refusal(path: Path | str) -> str:
    with pytest.raises(NotAVideoError) as caught:
        probe(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(Path(path).name)
    assert isinstance(caught.value, ValueError)
    return message


def test_missing_empty_and_not_regular(tmp_path):
    assert "does not exist" in refusal(tmp_path / "nothing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert refusal(empty) == "empty.mp4 is empty"
    assert "is not a regular file" in refusal(tmp_path)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert "is not a regular file" in refusal(fifo)  # and did not block waiting for a writer


def test_text_file_named_mp4(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 20)
    assert refusal(text).startswith("notes.mp4 is not a video FFmpeg can read: ")


def test_truncated_mp4(clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:2000])  # the index (moov) is at the end: cut off
    assert refusal(broken).startswith("broken.mp4 is truncated: its structure needs ")


@pytest.mark.parametrize("name", ["still.png", "still.jpg", "png_renamed.mp4"])
def test_images(tmp_path, name):
    encoded = tmp_path / ("frame.png" if name.endswith(".mp4") else name)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", "-update", "1", encoded)
    encoded.rename(tmp_path / name)
    assert refusal(tmp_path / name) == f"{name} is an image, not a video"


def test_audio_only(tmp_path):
    m4a, mp3 = tmp_path / "voice.m4a", tmp_path / "song.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", m4a)  # an accepted container
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", mp3)  # a format that is audio only
    assert refusal(m4a) == "voice.m4a has no video stream"
    assert refusal(mp3).startswith("song.mp3 has no video stream")


def test_zero_duration(tmp_path):
    empty_avi = tmp_path / "nothing.avi"  # a header with a video stream, and no frames
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "0", "-c:v", "libx264", empty_avi)
    assert refusal(empty_avi) == "nothing.avi has no duration (zero or unknown length)"


def test_frame_too_large(tmp_path):
    wide = tmp_path / "panorama.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"color=size={MAX_DIMENSION + 64}x64:duration=0.2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        wide,
    )
    assert refusal(wide) == (
        f"panorama.mp4 is {MAX_DIMENSION + 64}x64; the largest frame EncodeFlow accepts is 8192x8192"
    )


# -- playlists and lists that reference other files ----------------------------------------------
#
# A playlist is refused; the point is that it is refused *before* FFmpeg opens what it references.
# Watching for that with atime depends on mount options (noatime, relatime), so the referenced
# file is a FIFO instead. Opening a FIFO for reading blocks until a writer comes, and a writer's
# non-blocking open succeeds only while some reader has the FIFO open (ENXIO otherwise). So while
# the call runs in a thread, the test polls with such a writer's open: success means the call
# opened the referenced file (closing the writer then lets that stuck reader see end-of-file and
# return). A control shows that plain FFmpeg, without the whitelists, does open the reference on
# this FFmpeg build, so the test catches a regression rather than passing for an unrelated reason.


def opens_fifo(call, fifo: Path, timeout: float = 10.0) -> bool:
    """Whether ``call()``, run in a thread, opened ``fifo`` for reading before it returned."""
    thread = threading.Thread(target=lambda: _swallow(call), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody has it open for reading
            if not thread.is_alive():
                return False
            time.sleep(0.02)
            continue
        while thread.is_alive() and time.monotonic() < deadline:  # it may try again: release again
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            thread.join(0.1)
        return True
    raise AssertionError(f"{call} neither returned nor opened {fifo.name} in {timeout} s")


def _swallow(call) -> None:
    try:
        call()
    except Exception:
        pass


def plain_ffmpeg_open(path: Path) -> None:
    av.open(str(path)).close()


@pytest.fixture
def fifo_segment(tmp_path) -> Path:
    segment = tmp_path / "segment.ts"
    os.mkfifo(segment)
    return segment


def test_hls_playlist_is_refused_before_it_opens_its_segment(tmp_path, fifo_segment):
    playlist = tmp_path / "stream.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nsegment.ts\n#EXT-X-ENDLIST\n"
    )
    assert opens_fifo(lambda: plain_ffmpeg_open(playlist), fifo_segment)  # control

    assert not opens_fifo(lambda: refusal(playlist), fifo_segment)
    assert "is an HLS/M3U playlist, not a video" in refusal(playlist)


def test_hls_playlist_named_mp4(tmp_path, fifo_segment):
    playlist = tmp_path / "movie.mp4"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nsegment.ts\n#EXT-X-ENDLIST\n")
    assert not opens_fifo(lambda: refusal(playlist), fifo_segment)
    assert refusal(playlist).startswith("movie.mp4 is an HLS/M3U playlist, not a video")


def test_concat_list_named_mp4(clip, tmp_path):
    """ffconcat is recognised by its content, whatever the name: the likeliest disguised reference."""
    reference = tmp_path / "secret.mp4"
    os.mkfifo(reference)
    listing = tmp_path / "movie.mp4"
    listing.write_text("ffconcat version 1.0\nfile secret.mp4\n")
    assert opens_fifo(lambda: plain_ffmpeg_open(listing), reference)  # control

    assert not opens_fifo(lambda: refusal(listing), reference)
    assert refusal(listing).startswith("movie.mp4 is an FFmpeg concat list, not a video")

    # And with a readable referenced file, nothing of it leaks into a result.
    reference.unlink()
    shutil.copy(clip, reference)
    assert "concat list" in refusal(listing)


def test_dash_manifest(tmp_path):
    manifest = tmp_path / "manifest.mp4"
    manifest.write_text('<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"></MPD>\n')
    assert "is a DASH manifest" in refusal(manifest)


def test_every_open_uses_the_whitelists(monkeypatch, clip, tmp_path):
    """Whatever probe opens, it opens with the protocol and format whitelists."""
    seen = []
    real_open = av.open

    def spy(*args, **kwargs):
        seen.append(kwargs.get("container_options") or {})
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    probe(clip)
    image = tmp_path / "x.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", "-update", "1", image)
    refusal(image)
    assert len(seen) >= 3
    assert all(opts.get("protocol_whitelist") == "file" and opts.get("format_whitelist") for opts in seen)
    assert "hls" not in media.ACCEPTED_DEMUXERS and "concat" not in media.ACCEPTED_DEMUXERS


# -- the binary --------------------------------------------------------------------------------


def test_version_and_encoders_are_cached_per_binary():
    binary = find_ffmpeg()
    version = ffmpeg_version(binary)
    assert version and " " not in version
    encoders = ffmpeg_encoders(binary)
    assert {"libx264", "libx265", "libvpx-vp9", "aac", "libopus"} <= set(encoders)
    assert set(encoders) <= set(media.INTERESTING_ENCODERS)

    started = time.perf_counter()
    assert ffmpeg_version(binary) == version and ffmpeg_encoders(binary) == encoders
    assert time.perf_counter() - started < 0.05  # no second run of FFmpeg


# -- which FFmpeg: the version policy ----------------------------------------------------------


@pytest.mark.parametrize(
    "version, release",
    [
        ("5.1.6-0+deb12u1", (5, 1, 6)),  # Debian 12
        ("4.4.2-0ubuntu0.22.04.1", (4, 4, 2)),  # Ubuntu 22.04
        ("n7.1", (7, 1)),  # a release tag
        ("n9.0.2-17-g2a571b6068-20260930", (9, 0, 2)),  # the bundled build: a release plus commits
        ("7.0.2-static", (7, 0, 2)),
        ("N-12345-g0123abcd", None),  # built from git master: no release to compare
        ("2023-01-01-git-0123abcd", None),
    ],
)
def test_ffmpeg_versions_are_read_as_releases(version, release):
    assert media.parse_ffmpeg_version(version) == release


@pytest.fixture
def bundled():
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def only_on_path(monkeypatch, fake: Path) -> None:
    monkeypatch.setenv("PATH", str(fake.parent))  # the fake is the only ffmpeg the search finds


def test_an_old_ffmpeg_on_path_is_passed_over_with_one_warning(tmp_path, monkeypatch, caplog, bundled):
    fake = ffmpeg_claiming(tmp_path / "bin", "4.4.2-0ubuntu0.22.04.1")
    only_on_path(monkeypatch, fake)
    with caplog.at_level("WARNING", logger="farm.domain.media"):
        assert find_ffmpeg() == find_ffmpeg() == bundled
    assert [r.getMessage() for r in caplog.records] == [
        f"FFmpeg 4.4.2-0ubuntu0.22.04.1 on PATH ({fake}) is older than 5.1; using the bundled FFmpeg "
        f"{ffmpeg_version(bundled)} ({bundled}) instead"
    ]


def test_a_new_enough_or_unnumbered_ffmpeg_on_path_is_used(tmp_path, monkeypatch, caplog):
    debian = ffmpeg_claiming(tmp_path / "debian", "5.1.6-0+deb12u1")
    only_on_path(monkeypatch, debian)
    assert find_ffmpeg() == str(debian)
    git = ffmpeg_claiming(tmp_path / "git", "N-12345-g0123abcd")
    only_on_path(monkeypatch, git)
    with caplog.at_level("INFO", logger="farm.domain.media"):
        assert find_ffmpeg() == str(git)
    assert "reports version 'N-12345-g0123abcd', not a release number" in caplog.text


def test_an_ffmpeg_on_path_that_does_not_run_is_passed_over(tmp_path, monkeypatch, caplog, bundled):
    broken = tmp_path / "bin" / "ffmpeg"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'libavcodec.so.59: cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    only_on_path(monkeypatch, broken)
    with caplog.at_level("WARNING", logger="farm.domain.media"):
        assert find_ffmpeg() == bundled
    assert f"FFmpeg on PATH ({broken}) does not run" in caplog.text and "using the bundled FFmpeg" in caplog.text


def test_an_old_ffmpeg_named_explicitly_is_refused(tmp_path, monkeypatch):
    fake = ffmpeg_claiming(tmp_path / "old", "4.4.2-0ubuntu0.22.04.1")
    monkeypatch.setenv(media.FFMPEG_ENV, str(fake))
    with pytest.raises(media.FFmpegNotFound, match=r"^FFmpeg 4\.4\.2-0ubuntu0\.22\.04\.1 at .* is older than 5\.1"):
        find_ffmpeg()
    new = ffmpeg_claiming(tmp_path / "new", "6.1.1-3ubuntu5")
    assert find_ffmpeg(str(new)) == str(new), "the settings' FFmpeg wins over the environment's"
