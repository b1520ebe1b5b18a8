"""The live chart's ring buffer and its curve habits (created once, setData on the tick)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.widgets.live_chart import LiveChart, RingBuffer


def points(curve) -> int:
    x, _ = curve.getData()
    return 0 if x is None else len(x)


def test_ring_buffer_keeps_the_last_600_points_in_order():
    buffer = RingBuffer(600)
    for i in range(1000):
        buffer.append(float(i), i * 2.0)
    assert len(buffer) == 600
    times, values = buffer.data()
    assert times[0] == 400 and times[-1] == 999
    assert np.all(np.diff(times) == 1)
    assert np.array_equal(values, times * 2)
    assert buffer.last_time == 999 and buffer.oldest_time == 400


def test_ring_buffer_before_and_at_wraparound():
    buffer = RingBuffer(3)
    assert len(buffer) == 0 and buffer.last_time is None
    assert buffer.times().size == 0
    buffer.extend([1, 2], [10, 20])
    assert list(buffer.times()) == [1, 2]
    buffer.extend([3, 4], [30, 40])
    assert list(buffer.times()) == [2, 3, 4]
    assert list(buffer.values()) == [20, 30, 40]
    buffer.append(5, 50)
    buffer.append(6, 60)
    assert list(buffer.times()) == [4, 5, 6]


def test_ring_buffer_replace_and_clear():
    buffer = RingBuffer(4)
    buffer.extend(range(3), range(3))
    buffer.replace(list(range(10)), list(range(10, 20)))
    assert list(buffer.times()) == [6, 7, 8, 9] and list(buffer.values()) == [16, 17, 18, 19]
    buffer.append(10, 20)
    assert list(buffer.times()) == [7, 8, 9, 10]
    buffer.clear()
    assert len(buffer) == 0
    with pytest.raises(ValueError):
        RingBuffer(0)


def test_chart_creates_each_curve_once_and_sets_data_on_the_tick(qtbot):
    chart = LiveChart("CPU", "%", interval_ms=50)
    qtbot.addWidget(chart)
    chart.resize(500, 250)
    chart.show()
    qtbot.waitExposed(chart)
    items_before = len(chart.plot.getPlotItem().listDataItems())
    now = time.time()
    for i in range(700):
        chart.append("node-a", now - 700 + i, i % 100)
    assert points(chart.curve("node-a")) == 0, "drawn on the tick, not on append"
    qtbot.waitUntil(lambda: points(chart.curve("node-a")) == 600, timeout=2000)
    x, y = chart.curve("node-a").getData()
    assert x[-1] == pytest.approx(now - 1) and y[-1] == 699 % 100
    assert not chart.append("node-a", now - 5, 1.0), "an older point is not appended"
    chart.append("node-b", now, 50)
    assert len(chart.plot.getPlotItem().listDataItems()) == items_before + 2
    for _ in range(3):
        chart.append("node-a", time.time(), 5)
        qtbot.wait(60)
    assert len(chart.plot.getPlotItem().listDataItems()) == items_before + 2, "no plot item per update"
    legend = chart.plot.getPlotItem().legend
    assert legend is not None and [label.text for _, label in legend.items] == ["node-a", "node-b"]


def test_chart_skips_setdata_when_nothing_changed(qtbot):
    chart = LiveChart(interval_ms=30)
    qtbot.addWidget(chart)
    chart.show()
    qtbot.waitExposed(chart)
    chart.append("s", time.time(), 1)
    chart.flush()
    calls = []
    chart.curve("s").sigPlotChanged.connect(lambda *_: calls.append(1))  # emitted by setData
    qtbot.wait(150)
    assert calls == []
    chart.append("s", time.time() + 1, 2)
    qtbot.waitUntil(lambda: calls == [1], timeout=1000)


def test_merge_adds_history_in_order_without_duplicates(qtbot):
    chart = LiveChart(capacity=5)
    qtbot.addWidget(chart)
    now = time.time()
    chart.append("s", now + 10, 1)
    chart.append("s", now + 11, 2)
    chart.merge("s", [now + 7, now + 8, now + 9, now + 10], [70, 80, 90, 100])
    assert list(chart.buffer("s").times() - now) == pytest.approx([7, 8, 9, 10, 11])
    assert list(chart.buffer("s").values()) == [70, 80, 90, 1, 2]
    chart.flush()
    assert list(chart.curve("s").getData()[1]) == [70, 80, 90, 1, 2]


def test_time_axis_spans_the_data_between_one_minute_and_the_window(qtbot):
    chart = LiveChart(window_s=600, min_span_s=60)
    qtbot.addWidget(chart)
    view = chart.plot.getPlotItem().getViewBox()

    def span():
        chart.flush()
        left, right = view.viewRange()[0]
        return right - left

    now = time.time()
    chart.append("s", now - 5, 1)
    assert span() == pytest.approx(60, abs=1), "a few seconds of data fill a minute, not a sliver"
    chart.merge("s", [now - 300], [1])
    assert span() == pytest.approx(300, abs=1)
    chart.merge("s", [now - 3000], [1])
    assert span() == pytest.approx(600, abs=1)
    assert chart.plot.getPlotItem().getAxis("bottom").tickStrings([now], 1, 120)[0] == time.strftime(
        "%H:%M", time.localtime(now)
    )


def test_past_max_curves_the_series_share_one_curve_and_their_average(qtbot):
    chart = LiveChart("CPU", "%", max_curves=3, group_label="nodes", interval_ms=50)
    qtbot.addWidget(chart)
    chart.resize(500, 250)
    chart.show()
    qtbot.waitExposed(chart)
    item = chart.plot.getPlotItem()
    now = time.time()
    for node in range(3):
        for i in range(10):
            chart.append(f"n{node}", now - 10 + i, 10 * (node + 1))
    chart.flush()
    assert chart.fleet_curves is None and len(item.listDataItems()) == 3

    for node in range(3, 20):  # 20 nodes: two items, whatever the count
        for i in range(10):
            chart.append(f"n{node}", now - 10 + i, 10 * (node % 4 + 1))
    chart.flush()
    every, mean = chart.fleet_curves
    assert item.listDataItems() == [every, mean]
    assert len(chart.series_keys()) == 20 and chart.curve("n7") is every
    x, y = every.getData()
    assert np.isnan(y).sum() == 20, "a gap after each node's samples: nodes are not joined"
    assert np.nanmax(y) == 40 and np.nanmin(y) == 10
    _, averages = mean.getData()
    expected = np.mean([10 * (n + 1) for n in range(3)] + [10 * (n % 4 + 1) for n in range(3, 20)])
    assert averages == pytest.approx(np.full(len(averages), expected))
    assert [label.text for _, label in item.legend.items] == ["each of 20 nodes", "average of 20"]

    chart.append("n21", now, 100)  # one more node joins the group curve and the count
    chart.flush()
    assert item.listDataItems() == [every, mean]
    assert [label.text for _, label in item.legend.items] == ["each of 21 nodes", "average of 21"]
