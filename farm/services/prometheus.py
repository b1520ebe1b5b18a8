"""The farm's history from Prometheus: what the panel's Metrics page shows beyond Redis' 10 minutes.

Nodes keep only their last 10 minutes of samples in Redis. A studio that runs Prometheus (see
``packaging/prometheus``) keeps far more; with ``ENCODEFLOW_PROMETHEUS_URL`` set, the panel reads
the last hours from Prometheus' HTTP API (``/api/v1/query_range``), using the node metrics'
names (``farm_node/metrics.py``). Blocking calls: the panel runs them through its runner.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from farm.base.errors import FarmError
from farm.base.redact import redact_url

TIMEOUT_S = 10
MAX_POINTS = 400  # per series: enough for a chart a few hundred pixels wide

# What the Metrics page draws, as PromQL. ``queue_jobs`` is the same on every node: max, not sum.
FLEET_QUERIES = {
    "cpu": "max by (node) (worker_cpu_usage)",
    "memory": "max by (node) (worker_memory_usage_ratio) * 100",
    "queue": 'max by (state) (queue_jobs{state=~"waiting|active"})',
    # Jobs finished per minute, averaged over each step.
    "finished": 'sum by (status) (increase(workers_jobs_processed_total{status=~"success|failed"}[{step}s])) '
    "* 60 / {step}",
}


class PrometheusError(FarmError, RuntimeError):
    """Prometheus could not be asked or refused the query; the message says which and what to do."""


@dataclass
class History:
    """Series per chart: ``{"cpu": {"node-1": ([t...], [v...])}, "queue": {"waiting": ...}, ...}``."""

    start: float
    end: float
    step: int
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = field(default_factory=dict)


class PrometheusClient:
    def __init__(self, url: str, timeout: float = TIMEOUT_S):
        if not url.startswith(("http://", "https://")):
            raise PrometheusError(
                f"ENCODEFLOW_PROMETHEUS_URL must start with http:// or https://, got {redact_url(url)!r}"
            )
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        # urllib does not send a URL's user:password itself: basic auth (a Prometheus behind a
        # reverse proxy) goes in a header, and the URL used for requests carries no secret.
        self._auth = None
        if parts.username is not None or parts.password is not None:
            pair = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = urllib.parse.urlunsplit(parts)
        self.shown_url = redact_url(url.rstrip("/"))
        self.timeout = timeout

    def query_range(self, query: str, start: float, end: float, step: int) -> list[dict[str, Any]]:
        """The ``result`` list of a range query (``[{"metric": {...}, "values": [[t, "v"], ...]}]``)."""
        return self._result("query_range", query, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))

    def query(self, query: str) -> list[dict[str, Any]]:
        """The ``result`` list of an instant query (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        return self._result("query", query)

    def _result(self, endpoint: str, query: str, **params: str) -> list[dict[str, Any]]:
        body = self._get(f"/api/v1/{endpoint}?{urllib.parse.urlencode({'query': query, **params})}")
        if body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus at {self.shown_url} refused the query {query!r}: "
                f"{body.get('errorType', 'error')}: {body.get('error', 'no reason given')}"
            )
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def fleet_history(self, hours: float = 24, now: float | None = None) -> History:
        """The Metrics page's four charts over the last ``hours``, about ``MAX_POINTS`` points each."""
        end = time.time() if now is None else now
        start = end - hours * 3600
        step = max(15, int((end - start) / MAX_POINTS))
        history = History(start=start, end=end, step=step)
        for chart, template in FLEET_QUERIES.items():
            query = template.replace("{step}", str(step))
            label = {"cpu": "node", "memory": "node", "queue": "state", "finished": "status"}[chart]
            series = {}
            for item in self.query_range(query, start, end, step):
                name = item.get("metric", {}).get(label, "")
                name = {"success": "completed"}.get(name, name)  # the panel's word for a finished job
                points = item.get("values", [])
                series[name] = ([float(t) for t, _ in points], [_number(v) for _, v in points])
            history.series[chart] = series
        return history

    def _get(self, path: str) -> dict[str, Any]:
        shown = self.shown_url
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        if self._auth:  # never sent on to where a redirect points
            request.add_unredirected_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as exc:
            try:  # Prometheus explains a bad query in a JSON body with status 400 or 422
                body = json.load(exc)
            except (ValueError, OSError):
                body = None
            if isinstance(body, dict) and body.get("status") == "error":
                return body
            raise PrometheusError(
                f"Prometheus at {shown} answered HTTP {exc.code} ({exc.reason}); "
                "check ENCODEFLOW_PROMETHEUS_URL (the server's base URL, e.g. "
                "http://prometheus:9090)"
            ) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(
                f"cannot reach Prometheus at {shown}: {reason}; check "
                "ENCODEFLOW_PROMETHEUS_URL and that Prometheus runs"
            ) from None
        except ValueError:
            raise PrometheusError(
                f"{shown} did not answer like Prometheus (no JSON); check ENCODEFLOW_PROMETHEUS_URL"
            ) from None


def _number(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
