"""Jobs per minute, counted without Qt: minute buckets over a sliding window."""

import pytest

from app.rates import MinuteRates, minute_start, stream_id_time

T0 = 1_700_000_040.0  # the start of a minute


def test_stream_id_time_reads_the_milliseconds_of_a_stream_id():
    assert stream_id_time("1700000040123-7") == pytest.approx(1_700_000_040.123)
    assert stream_id_time("not-an-id", default=5.0) == 5.0
    assert stream_id_time(None, default=None) is None


def test_minute_start():
    assert minute_start(T0) == T0
    assert minute_start(T0 + 59.9) == T0
    assert minute_start(T0 + 60) == T0 + 60


def test_events_are_counted_in_the_minute_they_happened():
    rates = MinuteRates(window_minutes=5)
    now = T0 + 4 * 60 + 10
    assert rates.add("completed", T0 + 1, now=now)
    assert rates.add("completed", T0 + 59, now=now)
    assert rates.add("failed", T0 + 61, now=now)
    assert rates.add("completed", now, now=now)
    starts, counts = rates.series(now)
    assert starts == [T0 + 60 * i for i in range(5)]
    assert counts["completed"] == [2, 0, 0, 0, 1]
    assert counts["failed"] == [0, 1, 0, 0, 0]
    assert rates.total("completed", now) == 3
    assert counts["failed"][starts.index(minute_start(T0 + 90))] == 1  # the minute that holds T0 + 90


def test_unknown_kinds_and_events_older_than_the_window_are_ignored():
    rates = MinuteRates(window_minutes=2)
    now = T0 + 60 + 5
    assert not rates.add("progress", now, now=now)
    assert not rates.add("completed", T0 - 1, now=now)
    assert rates.total("completed", now) == 0


def test_the_window_slides_and_old_buckets_are_dropped():
    rates = MinuteRates(window_minutes=3)
    rates.add("completed", T0, now=T0)
    assert rates.series(T0 + 2 * 60)[1]["completed"] == [1, 0, 0]
    starts, counts = rates.series(T0 + 3 * 60)
    assert starts[0] == T0 + 60 and counts["completed"] == [0, 0, 0]
    assert rates._buckets == {}


def test_window_must_hold_a_minute():
    with pytest.raises(ValueError):
        MinuteRates(window_minutes=0)
