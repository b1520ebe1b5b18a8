"""packaging/prometheus and packaging/grafana against real processes: a live ``farm-node``'s
/metrics checked by promtool, and a real Prometheus scraping that node, loading alerts.yml and
answering every query of the Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

import farm_node.metrics
from farm.services.prometheus import FLEET_QUERIES, PrometheusClient
from farm.services.registry import NodeRegistry
from tests.e2e.helpers import run_cli, submit, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "encodeflow-dashboard.json"
# What Grafana puts in for the dashboard's variables when it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$node": ".*"}


def _metrics_url(local_farm, name: str) -> str:
    registry = NodeRegistry(
        redis.Redis.from_url(local_farm.redis_url, decode_responses=True), local_farm.settings.queue
    )
    return next(n for n in registry.nodes() if n.name == name).metrics_url


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _documented_metrics() -> set[str]:
    """The metric names in farm_node/metrics.py's docstring table."""
    names = re.findall(r"^``(\w+)``\s+(?:gauge|counter|histogram|info)\s", farm_node.metrics.__doc__, re.MULTILINE)
    assert len(names) >= 10, "the table in farm_node/metrics.py's docstring changed shape"
    return set(names)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana sends it) for every target of every panel."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def test_a_live_nodes_metrics_pass_promtool_and_match_the_documented_table(local_farm, promtool, clip):
    node = local_farm(1)[0]
    url = _metrics_url(local_farm, node.name)
    # Paused, the node leaves a submitted job waiting: the scrape must read it from the queue.
    assert run_cli("node", "pause", node.name).returncode == 0
    wait_for(lambda: "paused" in run_cli("nodes").stdout, timeout=30, what="the node to pause")
    submit(clip)

    text = _get(url)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr  # promtool also lints names, units, HELP

    families = {family.name: family for family in text_string_to_metric_families(text)}
    exported = {sample.name for family in families.values() for sample in family.samples}
    names = set(families) | exported
    missing = {name for name in _documented_metrics() if name not in names}
    assert not missing, f"documented in farm_node/metrics.py but not served by a live node: {missing}"
    values = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
    assert values[("queue_jobs", frozenset({("state", "waiting")}))] == 1
    assert values[("worker_disk_total_bytes", frozenset({("node", node.name)}))] > 0
    assert values[("worker_concurrency", frozenset({("node", node.name)}))] == 1
    build = next(s for f in families.values() for s in f.samples if s.name == "encodeflow_build_info")
    assert build.labels["node"] == node.name and build.labels["version"] and build.labels["ffmpeg_version"]


def test_prometheus_loads_the_alerts_and_answers_every_dashboard_query(local_farm, prometheus_server):
    node = local_farm(1)[0]
    target = urllib.parse.urlsplit(_metrics_url(local_farm, node.name)).netloc
    url = prometheus_server([target], rule_files=[str(ALERTS)])
    client = PrometheusClient(url)
    wait_for(lambda: client.query('up{job="farm-nodes"} == 1'), timeout=30, what="the first scrape")

    # Every query parses and runs (PrometheusError otherwise, with Prometheus' reason).
    results = {(title, expr): client.query(expr) for title, expr in dashboard_queries()}
    for query in FLEET_QUERIES.values():  # the panel's history charts read the same metrics
        client.query(query.replace("{step}", "60"))
    # The panels a new farm shows at once have data for the node.
    for title in ("CPU per node", "Memory per node", "Running jobs per node", "Free disk per node (work dir)"):
        series = [r for (t, _), result in results.items() if t == title for r in result]
        assert [s["metric"].get("node") for s in series] == [node.name], title
    for title in ("Queue depth", "Nodes up", "Jobs waiting", "Jobs running / slots", "Node versions"):
        assert any(result for (t, _), result in results.items() if t == title), title

    def rules():
        groups = json.loads(_get(f"{url}/api/v1/rules"))["data"]["groups"]
        found = [rule for group in groups for rule in group["rules"]]
        return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else None

    evaluated = wait_for(rules, timeout=30, interval=0.5, what="every rule to be evaluated")
    assert {r["name"] for r in evaluated} == set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []

    # A node that stops is seen: its alert goes pending (it fires after the rule's 2 minutes).
    node.stop()

    def node_down():
        alerts = json.loads(_get(f"{url}/api/v1/alerts"))["data"]["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == "EncodeFlowNodeDown" and a["labels"]["instance"] == target
        ]

    assert wait_for(node_down, timeout=30, interval=0.5, what="EncodeFlowNodeDown")[0]["state"] == "pending"
