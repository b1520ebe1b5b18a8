"""Live time-series charts: a fixed-size ring buffer per series, drawn by one pyqtgraph plot.

The habits of pyqtgraph's own examples: each curve is created once, when its series first
appears; new points go into a :class:`RingBuffer`; a ``QTimer`` tick (500 ms) pushes the series
that changed to their curves with ``setData`` and slides the time window. The tick never does I/O
and skips its work while the chart is hidden (what changed meanwhile is drawn when it is shown).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QVBoxLayout, QWidget

# Distinct on light and dark backgrounds, in the order series appear.
SERIES_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


class RingBuffer:
    """The last ``capacity`` (time, value) points, oldest first, in two preallocated numpy arrays."""

    def __init__(self, capacity: int = 600):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._t = np.zeros(capacity, dtype=float)
        self._v = np.zeros(capacity, dtype=float)
        self._start = 0  # index of the oldest point
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def last_time(self) -> float | None:
        if not self._size:
            return None
        return float(self._t[(self._start + self._size - 1) % self.capacity])

    @property
    def oldest_time(self) -> float | None:
        return float(self._t[self._start]) if self._size else None

    def append(self, t: float, value: float) -> None:
        if self._size < self.capacity:
            end = (self._start + self._size) % self.capacity
            self._size += 1
        else:  # full: the newest point takes the oldest one's place
            end = self._start
            self._start = (self._start + 1) % self.capacity
        self._t[end] = t
        self._v[end] = value

    def extend(self, times: Iterable[float], values: Iterable[float]) -> None:
        for t, value in zip(times, values, strict=False):
            self.append(t, value)

    def replace(self, times: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> None:
        """Hold exactly the last ``capacity`` of these points."""
        kept_t = np.asarray(times, dtype=float)[-self.capacity :]
        kept_v = np.asarray(values, dtype=float)[-self.capacity :]
        n = len(kept_t)
        self._t[:n], self._v[:n] = kept_t, kept_v
        self._start, self._size = 0, n

    def clear(self) -> None:
        self._start = self._size = 0

    def _order(self) -> np.ndarray:
        return (self._start + np.arange(self._size)) % self.capacity

    def times(self) -> np.ndarray:
        return self._t[self._order()]

    def values(self) -> np.ndarray:
        return self._v[self._order()]

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (times, values), oldest first."""
        order = self._order()
        return self._t[order], self._v[order]


class ClockAxis(pg.AxisItem):
    """A time axis for epoch seconds: clock-time labels (``14:05``, or ``14:05:30`` when zoomed
    in) at a round step that leaves about 90 pixels between labels."""

    STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600)

    def tickValues(self, minVal, maxVal, size):
        if maxVal <= minVal or size <= 0:
            return []
        wanted = max(2, int(size / 90))
        step = next((s for s in self.STEPS if (maxVal - minVal) / s <= wanted), self.STEPS[-1])
        first = math.ceil(minVal / step) * step
        return [(step, list(np.arange(first, maxVal + 1e-9, step)))]

    def tickStrings(self, values, scale, spacing):
        fmt = "%H:%M:%S" if spacing < 60 else "%H:%M"
        return [time.strftime(fmt, time.localtime(v)) for v in values]


class CountAxis(pg.AxisItem):
    """A y axis for counts: ticks only at whole numbers (no "0.5 jobs")."""

    def tickValues(self, minVal, maxVal, size):
        levels = [(spacing, values) for spacing, values in super().tickValues(minVal, maxVal, size) if spacing >= 1]
        return levels or [(1.0, list(np.arange(math.ceil(minVal), math.floor(maxVal) + 1)))]


class LiveChart(QWidget):
    """One plot of several live series against clock time, the last ``window_s`` seconds.

    ``y_range`` fixes the y axis (``(0, 100)`` for percentages); ``None`` scales it to the data
    (never below zero, at least ``0..min_count_range``) with whole-number ticks, for counts. Series
    are added with :meth:`add_series` (or on their first point) and fed with :meth:`append`,
    :meth:`merge` (history, in any order) or :meth:`set_data`.
    """

    def __init__(
        self,
        title: str = "",
        y_label: str = "",
        *,
        y_range: tuple[float, float] | None = (0, 100),
        window_s: float = 600.0,
        min_span_s: float = 60.0,
        min_count_range: float = 4,
        capacity: int = 600,
        max_curves: int | None = None,
        group_label: str = "series",
        interval_ms: int = 500,
        parent=None,
    ):
        super().__init__(parent)
        # Past ``max_curves`` series the chart draws them all as one thin curve plus their average
        # (see _become_fleet): 64 curves of 600 points took ~100 ms a tick, one curve ~30 ms, and 64
        # colours cannot be told apart anyway.
        self.max_curves = max_curves
        self.group_label = group_label
        self._fleet: tuple[pg.PlotDataItem, pg.PlotDataItem] | None = None
        self._fleet_size = 0
        self.window_s = window_s
        self.min_span_s = min(min_span_s, window_s)
        self.capacity = capacity
        self._buffers: dict[str, RingBuffer] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._labels: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._legend: pg.LegendItem | None = None

        palette = self.palette()
        background = palette.color(QPalette.ColorRole.Base)
        foreground = palette.color(QPalette.ColorRole.Text)
        axes = {"bottom": ClockAxis(orientation="bottom")}
        if y_range is None:
            axes["left"] = CountAxis(orientation="left")
        self.plot = pg.PlotWidget(background=background, axisItems=axes)
        item = self.plot.getPlotItem()
        if title:
            item.setTitle(title, color=foreground.name(), size="10pt")
        for side in ("left", "bottom"):
            axis = item.getAxis(side)
            axis.setPen(foreground)
            axis.setTextPen(foreground)
        if y_label:
            item.setLabel("left", y_label, color=foreground.name())
        item.showGrid(x=True, y=True, alpha=0.25)
        item.setDownsampling(mode="peak")
        item.setClipToView(True)
        item.setMouseEnabled(x=False, y=False)  # a monitor follows the clock; panning would fight it
        item.setMenuEnabled(False)
        item.hideButtons()
        if y_range is not None:
            item.setYRange(*y_range, padding=0.05)
            item.enableAutoRange(y=False)
        else:
            item.enableAutoRange(y=True)
            item.setAutoVisible(y=True)
            item.getViewBox().setLimits(yMin=0, minYRange=min_count_range)
        self._slide_window()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    # -- series -------------------------------------------------------------------------------
    def add_series(
        self, key: str, label: str | None = None, color: str | None = None, *, step: bool = False, fill: bool = False
    ) -> pg.PlotDataItem:
        """Create the series' curve (once; later calls return the same curve)."""
        if key in self._curves:
            return self._curves[key]
        if self._fleet is None and self.max_curves is not None and len(self._curves) >= self.max_curves:
            self._become_fleet()
        if self._fleet is not None:  # one more series in the group curve: no item of its own
            self._curves[key] = None
            self._buffers[key] = RingBuffer(self.capacity)
            self._labels[key] = label or key
            self._dirty.add(key)
            return self._fleet[0]
        pen_color = QColor(color or SERIES_COLORS[len(self._curves) % len(SERIES_COLORS)])
        # A 1 px cosmetic pen: thicker lines made one tick of a 64-node chart ~4x slower to draw.
        options = {"pen": pg.mkPen(pen_color, width=1)}
        if step:
            options["stepMode"] = "left"
        if fill:
            shade = QColor(pen_color)
            shade.setAlpha(70)
            options.update(fillLevel=0, brush=shade)
        curve = self.plot.getPlotItem().plot([], [], **options)
        self._curves[key] = curve
        self._buffers[key] = RingBuffer(self.capacity)
        self._labels[key] = label or key
        self._update_legend(key)
        return curve

    def has_series(self, key: str) -> bool:
        return key in self._curves

    def series_keys(self) -> list[str]:
        return list(self._curves)

    def curve(self, key: str) -> pg.PlotDataItem:
        """The series' own curve; in fleet mode (past ``max_curves``) series share the group curve."""
        if self._fleet is not None:
            return self._fleet[0]
        return self._curves[key]

    @property
    def fleet_curves(self) -> tuple[pg.PlotDataItem, pg.PlotDataItem] | None:
        """(every series in one curve, their average) once past ``max_curves``; else ``None``."""
        return self._fleet

    def buffer(self, key: str) -> RingBuffer:
        return self._buffers[key]

    # -- data ---------------------------------------------------------------------------------
    def append(self, key: str, t: float, value: float) -> bool:
        """Add one point; a point not newer than the series' last one is ignored (returns False)."""
        self.add_series(key)
        buffer = self._buffers[key]
        last = buffer.last_time
        if last is not None and t <= last:
            return False
        buffer.append(t, value)
        self._dirty.add(key)
        return True

    def merge(self, key: str, times: Sequence[float], values: Sequence[float]) -> None:
        """Add points in any order (history loaded after live points arrived); duplicates dropped."""
        self.add_series(key)
        buffer = self._buffers[key]
        old_t, old_v = buffer.data()
        t = np.concatenate([old_t, np.asarray(times, dtype=float)])
        v = np.concatenate([old_v, np.asarray(values, dtype=float)])
        t, first = np.unique(t, return_index=True)  # sorted; keeps the first of equal times
        buffer.replace(t, v[first])
        self._dirty.add(key)

    def set_data(self, key: str, times: Sequence[float], values: Sequence[float]) -> None:
        """Replace the whole series (a series computed elsewhere, like counts per minute)."""
        self.add_series(key)
        self._buffers[key].replace(times, values)
        self._dirty.add(key)

    def flush(self) -> None:
        """Push the changed series to their curves now (the tick does this while visible)."""
        if self._fleet is not None:
            if self._dirty:
                self._draw_fleet(*self._fleet)
        else:
            for key in self._dirty:
                self._curves[key].setData(*self._buffers[key].data())
        self._dirty.clear()
        self._slide_window()

    # -- fleet mode ---------------------------------------------------------------------------
    def _become_fleet(self) -> None:
        """From one curve per series to two items: all series in one grey curve (NaN between
        series, so they are not joined) and their average in colour."""
        item = self.plot.getPlotItem()
        for curve in self._curves.values():
            item.removeItem(curve)
        legend = self._ensure_legend()
        legend.clear()
        legend.setColumnCount(1)
        every = item.plot([], [], pen=pg.mkPen(QColor(128, 134, 145, 110), width=1), connect="finite")
        mean = item.plot([], [], pen=pg.mkPen(QColor(SERIES_COLORS[0]), width=2))
        self._fleet = (every, mean)
        self._curves = dict.fromkeys(self._curves)
        self._dirty.update(self._buffers)

    def _draw_fleet(self, every: pg.PlotDataItem, mean: pg.PlotDataItem) -> None:
        times: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for buffer in self._buffers.values():
            t, v = buffer.data()
            if len(t):
                times += [t, np.array([np.nan])]
                values += [v, np.array([np.nan])]
        if not times:
            every.setData([], [])
            mean.setData([], [])
            return
        t_all, v_all = np.concatenate(times), np.concatenate(values)
        every.setData(t_all, v_all, connect="finite")
        # The average per 5 s bin: samples of different series never share a timestamp.
        finite = np.isfinite(t_all)
        bins = np.floor(t_all[finite] / 5.0)
        keys, inverse = np.unique(bins, return_inverse=True)
        sums = np.bincount(inverse, weights=v_all[finite])
        counts = np.bincount(inverse)
        mean.setData(keys * 5.0 + 2.5, sums / counts)
        n = len(self._buffers)
        if n != self._fleet_size:  # relabel only when a series joined
            self._fleet_size = n
            legend = self._ensure_legend()
            legend.clear()
            legend.addItem(every, f"each of {n} {self.group_label}")
            legend.addItem(mean, f"average of {n}")

    # -- internals ----------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.isVisible():
            self.flush()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.flush()

    def _slide_window(self) -> None:
        # The right edge is now, or the newest point if a node's clock runs ahead of ours. The left
        # edge is the oldest point (at least ``min_span_s`` back, at most ``window_s``), so that a
        # chart with a minute of data shows that minute across its width, not a sliver at the edge.
        right = time.time()
        oldest = None
        for buffer in self._buffers.values():
            first, last = buffer.oldest_time, buffer.last_time
            if first is not None and last is not None:
                right = max(right, last)
                oldest = first if oldest is None else min(oldest, first)
        span = self.window_s if oldest is None else min(self.window_s, max(self.min_span_s, right - oldest))
        self.plot.getPlotItem().setXRange(right - span, right, padding=0)

    def _ensure_legend(self) -> pg.LegendItem:
        if self._legend is None:
            base = self.palette().color(QPalette.ColorRole.Base)
            base.setAlpha(210)  # curves stay visible under it, labels stay readable
            self._legend = self.plot.getPlotItem().addLegend(
                offset=(8, 8), labelTextSize="8pt", brush=base, pen=pg.mkPen("#d5d9e0")
            )
            self._legend.setLabelTextColor(self.palette().color(QPalette.ColorRole.Text))
        return self._legend

    def _update_legend(self, key: str) -> None:
        if len(self._curves) < 2 or self._fleet is not None:
            return
        new = self._legend is None
        legend = self._ensure_legend()
        if new:
            for existing in self._curves:
                if existing != key:
                    legend.addItem(self._curves[existing], self._labels[existing])
        legend.addItem(self._curves[key], self._labels[key])
        legend.setColumnCount(max(1, math.ceil(len(self._curves) / 8)))
