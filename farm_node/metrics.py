"""Prometheus exporter of one farm node: ``/metrics`` and ``/health`` on a small HTTP server thread.

Metric names are the Node system's, so its dashboards and alerts keep working. Every node has its
own ``CollectorRegistry`` (never the global one), so one process can hold several nodes.

=================================  =========  ======================  ================================
metric                             type       labels                  meaning
=================================  =========  ======================  ================================
``worker_cpu_usage``               gauge      node                    CPU in use on the machine, %
``worker_memory_usage_ratio``      gauge      node                    system memory in use, 0-1
``worker_active_jobs``             gauge      node                    jobs the node has in hand
``worker_job_duration_seconds``    histogram  node, format, status    wall time of finished jobs
``worker_job_queue_wait_seconds``  histogram  node                    from enqueue to start
``workers_jobs_processed_total``   counter    node, status            finished jobs
``queue_jobs``                     gauge      state                   jobs per BullMQ state
``encodeflow_build_info``          info       version, ffmpeg_version, node   always 1
``process_*``                      (several)                          the node process (Linux)
=================================  =========  ======================  ================================

``status`` of a finished job is ``success``, ``failed`` or ``cancelled``: a cancel is its own value
so that it does not count as a failure in error-rate alerts. ``queue_jobs`` describes the shared
queue, so every node of a farm exports the same numbers: aggregate with ``max()``, not ``sum()``.

``/health`` answers ``{"status", "node", "running", ...}`` from the ``health()`` callable the node
passes in: 200, or 503 when its status is ``unhealthy`` (e.g. Redis unreachable for long) or when
the callable itself fails.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

JOB_STATUSES = ("success", "failed", "cancelled")
QUEUE_STATES = ("waiting", "active", "failed", "delayed")  # always exported, 0 until set
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
QUEUE_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
UNHEALTHY_STATUSES = ("unhealthy", "error")


class NodeMetrics:
    """The node's metrics, and the HTTP server that exposes them."""

    def __init__(self, node: str, *, version: str = "", ffmpeg_version: str = "",
                 health: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.node = node
        self.health = health or (lambda: {"status": "ok"})
        self.registry = registry = CollectorRegistry()

        self._cpu = Gauge("worker_cpu_usage", "CPU in use on the node's machine, percent",
                          ["node"], registry=registry).labels(node)
        self._memory = Gauge("worker_memory_usage_ratio", "System memory in use on the node's machine, 0-1",
                             ["node"], registry=registry).labels(node)
        self._active = Gauge("worker_active_jobs", "Jobs the node is running", ["node"],
                             registry=registry).labels(node)
        self._duration = Histogram("worker_job_duration_seconds", "Wall time of finished jobs",
                                   ["node", "format", "status"], buckets=DURATION_BUCKETS, registry=registry)
        self._queue_wait = Histogram("worker_job_queue_wait_seconds", "Time from enqueue to start of a job",
                                     ["node"], buckets=QUEUE_WAIT_BUCKETS, registry=registry).labels(node)
        self._processed = Counter("workers_jobs_processed", "Jobs finished by the node",
                                  ["node", "status"], registry=registry)
        self._queue = Gauge("queue_jobs", "Jobs in the queue per state (the same on every node)",
                            ["state"], registry=registry)
        for status in JOB_STATUSES:
            self._processed.labels(node, status)  # exported as 0, so rate() works from the first job
        for state in QUEUE_STATES:
            self._queue.labels(state)
        Info("encodeflow_build", "Version of the node and of its FFmpeg", registry=registry).info(
            {"version": version, "ffmpeg_version": ffmpeg_version, "node": node}
        )
        ProcessCollector(registry=registry)

        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- recording -----------------------------------------------------------------------------
    def observe_job(self, format: str, status: str, duration_s: float) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; choose one of {', '.join(JOB_STATUSES)}")
        self._duration.labels(self.node, format, status).observe(max(0.0, duration_s))
        self._processed.labels(self.node, status).inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(max(0.0, seconds))  # clocks of producer and node may disagree

    def set_active(self, n: int) -> None:
        self._active.set(n)

    def set_system(self, cpu: float, mem: float) -> None:
        self._cpu.set(cpu)
        self._memory.set(mem)

    def set_queue_depth(self, depths: Mapping[str, int]) -> None:
        """Store per-state job counts (e.g. from BullMQ's getJobCounts); unknown states are kept too."""
        for state, count in depths.items():
            self._queue.labels(state).set(count)

    # -- exposing ------------------------------------------------------------------------------
    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the ``Accept`` header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def health_report(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status code and JSON body of ``/health``."""
        try:
            report = dict(self.health())
        except Exception as exc:  # noqa: BLE001 - a broken health check is itself unhealthy
            log.exception("health check of node %s failed", self.node)
            return 503, {"status": "error", "node": self.node, "error": str(exc)}
        report.setdefault("status", "ok")
        report.setdefault("running", 0)
        report["node"] = self.node
        return (503 if report["status"] in UNHEALTHY_STATUSES else 200), report

    def start_server(self, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, int]:
        """Serve on a daemon thread; port 0 picks a free one. Returns the server and its real port."""
        if self._server is not None:
            raise RuntimeError(f"metrics server of node {self.node} is already running")
        server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        server = server_class((host, port), _handler_for(self))
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 1.0},
                                        name=f"metrics-{self.node}", daemon=True)
        self._thread.start()
        self._server = server
        return server, server.server_address[1]

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(metrics: NodeMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "encodeflow-node"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server looks for
            path = urlsplit(self.path).path
            if path == "/metrics":
                code = 200
                body, content_type = metrics.render(self.headers.get("Accept", ""))
            elif path == "/health":
                code, report = metrics.health_report()
                body, content_type = json.dumps(report).encode(), "application/json"
            else:
                code, body, content_type = 404, b"not found: try /metrics or /health\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("metrics %s: " + format, self.address_string(), *args)

    return Handler
