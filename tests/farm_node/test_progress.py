"""Parsing FFmpeg's -progress output, from a recording of a real run and from odd lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm_node.progress import ProgressParser

DATA = Path(__file__).parent / "data"
# Recorded with the imageio-ffmpeg binary (FFmpeg 9.0.2): build_args(...) for a 6 s 1280x720
# H.264/AAC clip to webm 720p, stdout saved as is. Its out_time jumps ahead (Opus is encoded
# before VP9 catches up), steps back, and is N/A in two blocks: all things FFmpeg really does.
RECORDED = DATA / "progress_webm_720p_6s.txt"
RECORDED_DURATION = 6.0


def feed_all(parser: ProgressParser, lines) -> list[float]:
    return [p for p in (parser.feed(line) for line in lines) if p is not None]


def test_recorded_run():
    lines = RECORDED.read_text().splitlines()
    parser = ProgressParser(RECORDED_DURATION)
    percents = feed_all(parser, lines)

    assert len(percents) == sum(line.startswith("progress=") for line in lines)  # one per block
    assert percents == sorted(percents)  # monotonic, although out_time steps back in the recording
    assert percents[-1] == 100.0 and parser.done
    assert all(0 <= p < 100 for p in percents[:-1])
    assert percents[0] == pytest.approx(1.9935 / 6 * 100)
    assert parser.out_time == pytest.approx(6.0)
    assert parser.frame == 150
    assert parser.speed == pytest.approx(0.897)


def test_na_values_keep_the_last_known_ones():
    parser = ProgressParser(10.0)
    parser.feed("out_time_us=2500000")
    parser.feed("speed=1.5x")
    parser.feed("fps=30.0")
    assert parser.feed("progress=continue") == 25.0
    for line in ("out_time_us=N/A", "out_time_ms=N/A", "out_time=N/A", "speed=N/A", "fps=N/A"):
        parser.feed(line)
    assert parser.feed("progress=continue") == 25.0
    assert (parser.out_time, parser.speed, parser.fps) == (2.5, 1.5, 30.0)


def test_out_time_ms_is_microseconds_and_out_time_is_a_clock():
    parser = ProgressParser(10.0)
    parser.feed("out_time_ms=4000000")  # FFmpeg's misnomer: microseconds
    assert parser.feed("progress=continue") == 40.0
    parser.feed("out_time=00:00:07.500000")
    assert parser.feed("progress=continue") == 75.0


def test_below_100_until_end():
    parser = ProgressParser(2.0)
    parser.feed("out_time_us=2100000")  # past the probed duration (audio padding)
    assert parser.feed("progress=continue") < 100
    assert parser.feed("progress=end") == 100.0


def test_negative_start_and_garbage():
    parser = ProgressParser(10.0)
    for line in (
        "out_time_us=-23220",
        "garbage",
        "",
        "=",
        "=5",
        "frame=abc",
        "speed=fast",
        b"\xff\xfe\x00",
        "out_time=not:a:clock",
        "bitrate=   3.4kbits/s",
        "  ",
    ):
        assert parser.feed(line) is None
    assert parser.feed(b"progress=continue\n") == 0.0
    assert parser.out_time == 0.0 and parser.frame is None


def test_unknown_duration():
    parser = ProgressParser(0.0)
    parser.feed("out_time_us=5000000")
    assert parser.feed("progress=continue") == 0.0
    assert parser.feed("progress=end") == 100.0
