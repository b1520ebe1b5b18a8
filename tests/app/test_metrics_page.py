"""The Metrics page on a real local farm: a curve per node, queue depth, and jobs per minute."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.pages.metrics_page import MetricsPage
from farm.client import Farm
from farm.domain.jobspec import OutputConfig

NODE = "test-node-1"
STYLE = Path(__file__).resolve().parents[2] / "resources" / "style.qss"


def points(chart, key: str) -> int:
    if not chart.has_series(key):
        return 0
    x, _ = chart.curve(key).getData()
    return 0 if x is None else len(x)


def test_metrics_page_draws_the_fleet_and_counts_finished_jobs(
    local_node, services, runner, hub, qtbot, make_clip, tmp_path
):
    page = MetricsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    page.refresh()

    # The node's CPU and memory curves fill in from its samples; the queue depth is sampled too.
    qtbot.waitUntil(lambda: points(page.cpu_chart, NODE) >= 3 and points(page.mem_chart, NODE) >= 3, timeout=20_000)
    _, cpu = page.cpu_chart.curve(NODE).getData()
    assert ((cpu >= 0) & (cpu <= 100)).all()
    _, mem = page.mem_chart.curve(NODE).getData()
    assert 0 < mem[-1] <= 100, "memory is shown in percent, not as a ratio"
    qtbot.waitUntil(lambda: points(page.queue_chart, "waiting") >= 2, timeout=5000)
    assert page.cpu_chart.series_keys() == [NODE], "one curve per node, created once"

    # A finished job is counted in this minute's bar.
    clip = make_clip(320, 240, 2.0)
    job = services.farm.submit([clip], OutputConfig(resolution="360p", format="mp4"))[0]
    qtbot.waitUntil(lambda: page.rates.total("completed") == 1, timeout=60_000)
    assert services.farm.show(job.id).status == "completed"
    qtbot.waitUntil(lambda: page.rate_chart.curve("completed").getData()[1][-1] == 1, timeout=2000)
    _, failed = page.rate_chart.curve("failed").getData()
    assert failed.max() == 0
    qtbot.waitUntil(lambda: "1 completed, 0 failed" in page.summary.text(), timeout=3000)
    assert page.summary.text().startswith("1 of 1 node online")

    # Opened later, a page starts from the node's stored samples (the last 10 minutes).
    later = MetricsPage(services, runner, hub)
    qtbot.addWidget(later)
    later.refresh()
    qtbot.waitUntil(
        lambda: (
            later.cpu_chart.has_series(NODE)
            and len(later.cpu_chart.buffer(NODE)) >= len(page.cpu_chart.buffer(NODE)) - 1
        ),
        timeout=5000,
    )

    app = QApplication.instance()
    app.setStyleSheet(STYLE.read_text() if STYLE.exists() else "")
    try:
        app.processEvents()
        page.grab().save(str(tmp_path / "metrics.png"))
    finally:
        app.setStyleSheet("")
    print(tmp_path)


def test_metrics_history_failure_is_shown(services, runner, qtbot, monkeypatch, hub):
    page = MetricsPage(services, runner, hub)
    qtbot.addWidget(page)

    nowhere = services.settings.replace(redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setattr(services, "farm", Farm(nowhere, start_embedded=False))
    page.refresh()
    qtbot.waitUntil(lambda: page.error.isVisibleTo(page), timeout=5000)
    assert "Could not load the nodes' last 10 minutes from Redis" in page.error.text()
    assert "127.0.0.1:1" in page.error.text()


def test_metrics_page_shows_the_last_24_hours_from_prometheus(
    local_node, services, runner, hub, qtbot, prometheus_server
):
    from urllib.parse import urlsplit

    from farm.services.prometheus import PrometheusClient
    from tests.e2e.helpers import wait_for

    node = wait_for(lambda: next((n for n in services.farm.nodes() if n.name == NODE), None), 20, what="the node")
    url = prometheus_server([urlsplit(node.metrics_url).netloc])
    client = PrometheusClient(url)
    wait_for(
        lambda: client.query_range("worker_cpu_usage", time.time() - 60, time.time(), 1),
        30,
        what="Prometheus' first scrape",
    )
    services.settings = services.settings.replace(prometheus_url=url)

    page = MetricsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    assert page.range_combo.model().item(1).isEnabled()
    page.range_combo.setCurrentIndex(1)
    cpu = lambda: page.history_charts["cpu"]  # noqa: E731
    qtbot.waitUntil(lambda: points(cpu(), NODE) >= 1, timeout=20_000)
    assert page.stack.currentIndex() == 1
    assert page.history_status.text().startswith(f"From Prometheus at {url}: 1 node, one point every")
    _, values = cpu().curve(NODE).getData()
    assert ((values >= 0) & (values <= 100)).all()
    _, memory = page.history_charts["memory"].curve(NODE).getData()
    assert 0 < memory[-1] <= 100
    assert set(page.history_charts["queue"].series_keys()) == {"waiting", "active"}

    assert page._history_timer.isActive()
    page.hide()
    assert not page._history_timer.isActive(), "no queries every minute while the page is hidden"
    page.show()
    assert page._history_timer.isActive()
    page.range_combo.setCurrentIndex(0)  # back to live: the live charts, which kept filling
    assert page.stack.currentIndex() == 0 and page.history_status.isHidden()
    assert points(page.cpu_chart, NODE) >= 1


def test_without_prometheus_the_history_is_offered_with_how_to_get_it(services, runner, hub, qtbot):
    page = MetricsPage(services, runner, hub)
    qtbot.addWidget(page)
    assert not page.range_combo.model().item(1).isEnabled()
    assert "ENCODEFLOW_PROMETHEUS_URL" in page.range_combo.toolTip() and "Settings" in page.range_combo.toolTip()


def test_an_unreachable_prometheus_is_reported_on_the_page(services, runner, hub, qtbot):
    services.settings = services.settings.replace(prometheus_url="http://127.0.0.1:9")
    page = MetricsPage(services, runner, hub)
    qtbot.addWidget(page)
    page.range_combo.setCurrentIndex(1)
    qtbot.waitUntil(lambda: page.history_status.text().startswith("Could not load"), timeout=15_000)
    assert "cannot reach Prometheus at http://127.0.0.1:9" in page.history_status.text()
    assert "ENCODEFLOW_PROMETHEUS_URL" in page.history_status.text()
