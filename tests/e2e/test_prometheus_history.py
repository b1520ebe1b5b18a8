"""The farm's history from a real Prometheus scraping a real node (what the Metrics page shows with
ENCODEFLOW_PROMETHEUS_URL), and the errors a wrong URL gets."""

from __future__ import annotations

import urllib.parse

import pytest
import redis

from farm.services.prometheus import PrometheusClient, PrometheusError
from farm.services.registry import NodeRegistry
from tests.e2e.helpers import run_cli, wait_for


def _scrape_target(local_farm, name: str) -> str:
    registry = NodeRegistry(
        redis.Redis.from_url(local_farm.redis_url, decode_responses=True), local_farm.settings.queue
    )
    node = next(n for n in registry.nodes() if n.name == name)
    return urllib.parse.urlsplit(node.metrics_url).netloc


def test_fleet_history_comes_from_prometheus_per_node(local_farm, prometheus_server, clip):
    local_farm(1)
    url = prometheus_server([_scrape_target(local_farm, "node-1")])
    client = PrometheusClient(url)
    # One job, so that the counter of finished jobs moves while Prometheus watches.
    wait_for(lambda: client.query_range("worker_cpu_usage", *_last(60), 1), timeout=30, what="first scrape")
    done = run_cli("submit", str(clip), "--resolution", "360p", "--wait")
    assert done.returncode == 0, done.stderr

    def history():
        found = client.fleet_history(hours=0.05)
        finished = found.series.get("finished", {}).get("completed", ([], []))[1]
        return found if any(v > 0 for v in finished) else None

    found = wait_for(history, timeout=60, interval=1, what="the finished job in Prometheus")
    assert set(found.series) == {"cpu", "memory", "queue", "finished"}
    assert list(found.series["cpu"]) == ["node-1"] and list(found.series["memory"]) == ["node-1"]
    times, cpu = found.series["cpu"]["node-1"]
    assert times == sorted(times) and all(0 <= v <= 100 for v in cpu)
    assert all(0 < v <= 100 for v in found.series["memory"]["node-1"][1])
    assert set(found.series["queue"]) == {"waiting", "active"}
    assert found.step == 15  # 3 minutes / 400 points, never below Prometheus' useful resolution


def _last(seconds: float) -> tuple[float, float]:
    import time

    now = time.time()
    return now - seconds, now


def test_a_wrong_prometheus_url_gets_a_clear_error(local_farm):
    local_farm(1)
    with pytest.raises(PrometheusError, match=r"cannot reach Prometheus at http://:\*\*\*@127\.0\.0\.1:9: .*refused"):
        PrometheusClient("http://:sekrit@127.0.0.1:9/").fleet_history()
    # A server that is not Prometheus (the node's own metrics port).
    with pytest.raises(PrometheusError, match="answered HTTP 404"):
        PrometheusClient(f"http://{_scrape_target(local_farm, 'node-1')}").fleet_history()
    with pytest.raises(PrometheusError, match="must start with http"):
        PrometheusClient("prometheus:9090")


def test_a_query_prometheus_refuses_is_reported(prometheus_server):
    url = prometheus_server(["127.0.0.1:9"])
    with pytest.raises(PrometheusError, match="refused the query 'rate\\(' *: bad_data"):
        PrometheusClient(url).query_range("rate(", *_last(60), 15)
