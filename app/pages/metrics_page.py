"""Metrics: the whole fleet's CPU and memory, queue depth, and jobs per minute.

The CPU and memory charts draw a curve per node up to 12 nodes; past that, every node in one grey
curve plus the fleet's average (``FLEET``, see ``LiveChart``), which keeps a tick cheap with many nodes.

Everything is live from the hub: node samples (``samples_added``), queue counts
(``counts_updated``, once a second) and job events (``job_event``: completed and failed, counted
per minute by ``app.rates.MinuteRates``). When the page is first shown it also loads the nodes'
stored samples (the last 10 minutes) through the runner, so the charts do not start empty.

With ``ENCODEFLOW_PROMETHEUS_URL`` set, a range box also offers the last 24 hours from Prometheus
(``farm.services.prometheus``): the same four charts, read from Prometheus through the runner and refreshed
every minute while shown. The live charts keep filling meanwhile, so switching back is instant.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QStackedWidget, QVBoxLayout, QWidget

from app.hub import FarmHub
from app.rates import MINUTE, MinuteRates, minute_start, stream_id_time
from app.runner import BackgroundRunner
from app.services import AppServices
from app.widgets.live_chart import LiveChart
from farm.base.redact import redact_url
from farm.domain.nodes import MAX_SAMPLES
from farm.services.prometheus import MAX_POINTS, History, PrometheusClient

RATE_WINDOW_MINUTES = 60
QUEUE_SERIES = (("waiting", "Waiting", "#d9822b"), ("active", "Active", "#2f6fdb"))
RATE_SERIES = (("completed", "Completed", "#2e9e5b"), ("failed", "Failed", "#d62728"))
HISTORY_HOURS = 24
# More nodes than this: one grey curve for all of them and their average (see LiveChart).
FLEET: dict[str, Any] = dict(max_curves=12, group_label="nodes")
HISTORY_REFRESH_MS = 60_000


class MetricsPage(QWidget):
    title = "Metrics"

    def __init__(self, services: AppServices, runner: BackgroundRunner, hub: FarmHub, parent=None):
        super().__init__(parent)
        self.services, self.runner, self.hub = services, runner, hub
        self.setObjectName("page")
        self.rates = MinuteRates(("completed", "failed"), RATE_WINDOW_MINUTES)
        self._history = "not loaded"  # "loading", "loaded"
        self._rate_minute = 0.0

        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        self.summary = QLabel("Waiting for the farm's first report…")
        self.summary.setObjectName("statLabel")
        self.summary.setToolTip("Jobs finished are counted from the job events seen since this window opened.")
        self.range_combo = QComboBox()
        self.range_combo.setObjectName("metricsRange")
        self.range_combo.addItem("Live: last 10 minutes", "live")
        self.range_combo.addItem(f"Last {HISTORY_HOURS} hours (Prometheus)", "history")
        self._offer_history()
        self.range_combo.currentIndexChanged.connect(self._range_changed)
        top = QHBoxLayout()
        top.addWidget(heading)
        top.addSpacing(12)
        top.addWidget(self.summary, 1)
        top.addWidget(self.range_combo)
        self.error = QLabel()
        self.error.setObjectName("notice")
        self.error.setWordWrap(True)
        self.error.hide()

        self.cpu_chart = LiveChart(
            "CPU per node (% of the machine)", "%", y_range=(0, 100), capacity=MAX_SAMPLES, **FLEET
        )
        self.mem_chart = LiveChart(
            "Memory in use per node (% of the machine)", "%", y_range=(0, 100), capacity=MAX_SAMPLES, **FLEET
        )
        self.queue_chart = LiveChart("Queue depth (jobs)", "jobs", y_range=None, capacity=MAX_SAMPLES)
        self.rate_chart = LiveChart(
            "Jobs finished per minute (last hour)",
            "jobs / min",
            y_range=None,
            window_s=RATE_WINDOW_MINUTES * MINUTE,
            capacity=RATE_WINDOW_MINUTES + 1,
        )
        for key, label, color in QUEUE_SERIES:
            self.queue_chart.add_series(key, label, color)
        for key, label, color in RATE_SERIES:
            self.rate_chart.add_series(key, label, color, step=True, fill=True)
        self._update_rates()

        self.stack = QStackedWidget()
        self.stack.addWidget(_grid_of(self.cpu_chart, self.mem_chart, self.queue_chart, self.rate_chart))
        self.history_charts: dict[str, LiveChart] = {}  # built when first asked for
        self.history_status = QLabel()
        self.history_status.setObjectName("statLabel")
        self.history_status.setWordWrap(True)
        self.history_status.hide()
        self._history_timer = QTimer(self)
        self._history_timer.setInterval(HISTORY_REFRESH_MS)
        self._history_timer.timeout.connect(self._load_prometheus)
        self._prometheus_busy = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addLayout(top)
        layout.addWidget(self.error)
        layout.addWidget(self.history_status)
        layout.addWidget(self.stack, 1)

        hub.samples_added.connect(self.add_samples)
        hub.counts_updated.connect(self.add_counts)
        hub.job_event.connect(self.add_job_event)

    # -- the page contract ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Load the nodes' stored samples once (again after a failure); reload Prometheus' view."""
        self._offer_history()  # the Settings page may have set or cleared the Prometheus URL
        if self.showing_history():
            self._load_prometheus()
        if self._history != "not loaded":
            return
        self._history = "loading"
        self.runner.run(lambda: self.services.farm.node_history(), self._history_loaded, self._history_failed)

    # -- feeding -------------------------------------------------------------------------------------
    def add_samples(self, fresh: dict) -> None:
        """``{node: [{"t", "cpu", "mem"}, ...]}``, oldest first."""
        for node, samples in sorted(fresh.items()):
            self._ensure_node(node)
            for sample in samples:
                t = sample.get("t")
                if t is not None:
                    self.cpu_chart.append(node, t, float(sample.get("cpu", 0.0)))
                    self.mem_chart.append(node, t, float(sample.get("mem", 0.0)) * 100)

    def add_counts(self, counts: dict) -> None:
        now = time.time()
        for key, _, _ in QUEUE_SERIES:
            self.queue_chart.append(key, now, counts.get(key, 0))
        if minute_start(now) != self._rate_minute:  # the hour window moved on
            self._update_rates(now)
        self._show_summary(counts)

    def add_job_event(self, event) -> None:
        if event.event in ("completed", "failed"):
            if self.rates.add(event.event, stream_id_time(event.stream_id, time.time())):
                self._update_rates()

    # -- internals -----------------------------------------------------------------------------------
    def _ensure_node(self, node: str) -> None:
        # Both charts get the node at the same time, so it has the same colour in each.
        if not self.cpu_chart.has_series(node):
            self.cpu_chart.add_series(node, node)
            self.mem_chart.add_series(node, node)

    def _update_rates(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._rate_minute = minute_start(now)
        starts, counts = self.rates.series(now)
        # One more point at the end of this minute, so the current minute's step has its width.
        times = starts + [starts[-1] + MINUTE]
        for key, _, _ in RATE_SERIES:
            self.rate_chart.set_data(key, times, counts[key] + counts[key][-1:])

    def _show_summary(self, counts: dict) -> None:
        nodes = self.hub.nodes
        online = sum(1 for n in nodes if n.online)
        self.summary.setText(
            f"{online} of {len(nodes)} node{'s' if len(nodes) != 1 else ''} online · "
            f"{counts.get('waiting', 0)} waiting, {counts.get('active', 0)} running · last hour: "
            f"{self.rates.total('completed')} completed, {self.rates.total('failed')} failed"
        )

    def _history_loaded(self, history: dict[str, list[dict]]) -> None:
        self._history = "loaded"
        self.error.hide()
        for node, samples in sorted(history.items()):
            samples = [s for s in samples if s.get("t") is not None]
            if not samples:
                continue
            self._ensure_node(node)
            times = [s["t"] for s in samples]
            self.cpu_chart.merge(node, times, [float(s.get("cpu", 0.0)) for s in samples])
            self.mem_chart.merge(node, times, [float(s.get("mem", 0.0)) * 100 for s in samples])

    def _history_failed(self, exc: Exception) -> None:
        self._history = "not loaded"  # the next visit tries again
        self.error.setText(
            f"Could not load the nodes' last 10 minutes from Redis ({exc}). The charts fill "
            "from now on; check the Redis connection in the status bar."
        )
        self.error.show()

    # -- the last 24 hours from Prometheus -------------------------------------------------------------
    @property
    def prometheus_url(self) -> str | None:
        return self.services.settings.prometheus_url

    def _offer_history(self) -> None:
        model = self.range_combo.model()
        assert isinstance(model, QStandardItemModel)  # what a QComboBox keeps its items in
        model.item(1).setEnabled(bool(self.prometheus_url))
        if self.prometheus_url:
            self.range_combo.setToolTip(f"History from Prometheus at {redact_url(self.prometheus_url)}")
            return
        self.range_combo.setToolTip(
            "Set a Prometheus URL (Settings, or ENCODEFLOW_PROMETHEUS_URL) to see the "
            f"last {HISTORY_HOURS} hours; without it the charts show Redis' last 10 minutes"
        )
        if self.showing_history():
            self.range_combo.setCurrentIndex(0)

    def showing_history(self) -> bool:
        return self.range_combo.currentData() == "history"

    def _range_changed(self, _index: int) -> None:
        if self.showing_history():
            self._ensure_history_charts()
            self.stack.setCurrentIndex(1)
            self.history_status.setText(f"Loading the last {HISTORY_HOURS} hours from Prometheus…")
            self.history_status.setStyleSheet("")
            self.history_status.show()
            if self.isVisible():
                self._history_timer.start()
            self._load_prometheus()
        else:
            self._history_timer.stop()
            self.history_status.hide()
            self.stack.setCurrentIndex(0)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self.showing_history():
            self._history_timer.start()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        self._history_timer.stop()  # nobody looks: no 24-hour queries every minute

    def _ensure_history_charts(self) -> None:
        if self.history_charts:
            return
        window = HISTORY_HOURS * 3600
        options: dict[str, Any] = dict(window_s=window, min_span_s=window, capacity=MAX_POINTS + 10)
        self.history_charts = {
            "cpu": LiveChart(
                f"CPU per node, last {HISTORY_HOURS} h (% of the machine)", "%", y_range=(0, 100), **options, **FLEET
            ),
            "memory": LiveChart(
                f"Memory in use per node, last {HISTORY_HOURS} h (%)", "%", y_range=(0, 100), **options, **FLEET
            ),
            "queue": LiveChart(f"Queue depth, last {HISTORY_HOURS} h (jobs)", "jobs", y_range=None, **options),
            "finished": LiveChart(
                f"Jobs finished per minute, last {HISTORY_HOURS} h", "jobs / min", y_range=None, **options
            ),
        }
        for key, label, color in QUEUE_SERIES:
            self.history_charts["queue"].add_series(key, label, color)
        for key, label, color in RATE_SERIES:
            self.history_charts["finished"].add_series(key, label, color)
        self.stack.addWidget(_grid_of(*self.history_charts.values()))

    def _load_prometheus(self) -> None:
        if self._prometheus_busy or not self.prometheus_url:
            return
        self._prometheus_busy = True
        url = self.prometheus_url
        self.runner.run(
            lambda: PrometheusClient(url).fleet_history(HISTORY_HOURS), self._prometheus_loaded, self._prometheus_failed
        )

    def _prometheus_loaded(self, history: History) -> None:
        self._prometheus_busy = False
        for chart_key, series in history.series.items():
            chart = self.history_charts[chart_key]
            for name, (times, values) in sorted(series.items()):
                chart.set_data(name, times, values)
            for name in chart.series_keys():  # a node gone from the whole window: empty its curve
                if name not in series:
                    chart.set_data(name, [], [])
            chart.flush()
        nodes = len(history.series.get("cpu", {}))
        self.history_status.setText(
            f"From Prometheus at {redact_url(self.prometheus_url or '')}: {nodes} node{'s' if nodes != 1 else ''}, "
            f"one point every {_span(history.step)}; updated {time.strftime('%H:%M', time.localtime(history.end))}, "
            "every minute while shown."
        )
        self.history_status.setStyleSheet("")

    def _prometheus_failed(self, exc: Exception) -> None:
        self._prometheus_busy = False
        self.history_status.setText(f"Could not load the last {HISTORY_HOURS} hours: {exc}")
        self.history_status.setStyleSheet("color: #b3261e;")
        self.history_status.show()


def _grid_of(*charts: LiveChart) -> QWidget:
    page = QWidget()
    grid = QGridLayout(page)
    grid.setContentsMargins(0, 0, 0, 0)
    grid.setSpacing(12)
    for index, chart in enumerate(charts):
        chart.setMinimumSize(320, 200)
        grid.addWidget(chart, index // 2, index % 2)
    return page


def _span(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{seconds / 60:g} min"
