"""Prometheus exporter of one farm node: ``/metrics`` and ``/health``, served from the node's event loop.

Metric names are those of the Node.js BullMQ workers' exporter, so dashboards and alerts made for
those keep working. Every node has its own ``CollectorRegistry`` (never the global one), so one
process can hold several nodes.

=================================  =========  ======================  ================================
metric                             type       labels                  meaning
=================================  =========  ======================  ================================
``worker_cpu_usage``               gauge      node                    CPU in use on the machine, %
``worker_memory_usage_ratio``      gauge      node                    system memory in use, 0-1
``worker_active_jobs``             gauge      node                    jobs the node has in hand
``worker_concurrency``             gauge      node                    jobs the node runs at once, at most
``worker_job_duration_seconds``    histogram  node, format, status    wall time of finished jobs
``worker_job_queue_wait_seconds``  histogram  node                    from enqueue to start
``workers_jobs_processed_total``   counter    node, status            finished jobs
``worker_disk_free_bytes``         gauge      node                    free space of the work dir's disk
``worker_disk_total_bytes``        gauge      node                    size of the work dir's disk
``worker_redis_unreachable_seconds``  gauge   node                    how long heartbeats have failed, 0 when fine
``worker_disk_full``               gauge      node                    1 while the work dir has no room for jobs
``worker_jobs_handed_back_total``  counter    node, reason            jobs given back without using an attempt
``worker_ffmpeg_stalls_total``     counter    node                    FFmpeg runs stopped for making no progress
``queue_jobs``                     gauge      state                   jobs per BullMQ state
``encodeflow_build_info``          info       node, version,          always 1; the FFmpeg the node runs
                                              ffmpeg_version,
                                              ffmpeg_path
``process_*``                      (several)                          the node process (Linux)
=================================  =========  ======================  ================================

``status`` of a finished job is ``success``, ``failed`` or ``cancelled``: a cancel is its own value
so that it does not count as a failure in error-rate alerts. ``queue_jobs`` describes the shared
queue, so every node of a farm exports the same numbers: aggregate with ``max()``, not ``sum()``.
Queue depth and free disk are read when Prometheus scrapes (``on_scrape``, the disk's usage), not on
a timer: an idle node with nobody scraping it does no work for them. A queue read that Redis does
not answer within ``SCRAPE_REFRESH_TIMEOUT_S`` leaves the last numbers in place.

``/health`` answers ``{"status", "node", "running", ...}`` from the ``health()`` callable the node
passes in: 200, or 503 when its status is ``unhealthy`` (e.g. Redis unreachable for long) or when
the callable itself fails.

The server is an ``asyncio`` server on the node's own loop (``await serve()``, ``await close()``):
unlike ``http.server``'s ``serve_forever`` it has no poll interval, so it costs nothing between
requests. Rendering the exposition takes about a millisecond, well within what the loop tolerates.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily

log = logging.getLogger(__name__)

JOB_STATUSES = ("success", "failed", "cancelled")
# Why a job went back to the queue unfinished, its attempt unused: no room in the work dir, the
# database away, a stop (second SIGTERM).
HAND_BACK_REASONS = ("disk_full", "database_unreachable", "stop")
QUEUE_STATES = ("waiting", "active", "failed", "delayed")  # always exported, 0 until set
# Transcodes last from seconds (a short proxy) to hours (a feature film in AV1): buckets up to 4 h.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
QUEUE_WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
UNHEALTHY_STATUSES = ("unhealthy", "error")
SCRAPE_REFRESH_TIMEOUT_S = 2.0  # well inside Prometheus' default 10 s scrape timeout
REQUEST_TIMEOUT_S = 10.0  # a client that sends no complete request head in this time is dropped
MAX_HEAD_BYTES = 16 * 1024


class NodeMetrics:
    """The node's metrics, and the HTTP server that exposes them."""

    def __init__(
        self,
        node: str,
        *,
        version: str = "",
        ffmpeg_version: str = "",
        ffmpeg_path: str = "",
        concurrency: int = 1,
        disk_path: Path | str | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
        on_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.health = health or (lambda: {"status": "ok"})
        self.on_scrape = on_scrape  # e.g. read the queue depth, just before each /metrics
        self.registry = registry = CollectorRegistry()

        self._cpu = Gauge(
            "worker_cpu_usage", "CPU in use on the node's machine, percent", ["node"], registry=registry
        ).labels(node)
        self._memory = Gauge(
            "worker_memory_usage_ratio", "System memory in use on the node's machine, 0-1", ["node"], registry=registry
        ).labels(node)
        self._active = Gauge("worker_active_jobs", "Jobs the node is running", ["node"], registry=registry).labels(node)
        Gauge("worker_concurrency", "Jobs the node runs at once, at most", ["node"], registry=registry).labels(
            node
        ).set(concurrency)
        self._duration = Histogram(
            "worker_job_duration_seconds",
            "Wall time of finished jobs",
            ["node", "format", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._queue_wait = Histogram(
            "worker_job_queue_wait_seconds",
            "Time from enqueue to start of a job",
            ["node"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        ).labels(node)
        self._processed = Counter(
            "workers_jobs_processed", "Jobs finished by the node", ["node", "status"], registry=registry
        )
        self._redis_outage = Gauge(
            "worker_redis_unreachable_seconds",
            "How long the node's heartbeats have failed to reach Redis, 0 while they do",
            ["node"],
            registry=registry,
        ).labels(node)
        self._stalls = Counter(
            "worker_ffmpeg_stalls", "FFmpeg runs the progress watchdog stopped", ["node"], registry=registry
        ).labels(node)  # exported as 0 from the start
        self._disk_full = Gauge(
            "worker_disk_full", "1 while the node's work dir has no room for jobs", ["node"], registry=registry
        ).labels(node)
        self._handed_back = Counter(
            "worker_jobs_handed_back",
            "Jobs the node gave back to the queue without using an attempt",
            ["node", "reason"],
            registry=registry,
        )
        for reason in HAND_BACK_REASONS:
            self._handed_back.labels(node, reason)
        self._queue = Gauge(
            "queue_jobs", "Jobs in the queue per state (the same on every node)", ["state"], registry=registry
        )
        for status in JOB_STATUSES:
            self._processed.labels(node, status)  # exported as 0, so rate() works from the first job
        for state in QUEUE_STATES:
            self._queue.labels(state)
        Info("encodeflow_build", "Version of the node and of its FFmpeg", registry=registry).info(
            {"version": version, "ffmpeg_version": ffmpeg_version, "ffmpeg_path": ffmpeg_path, "node": node}
        )
        if disk_path is not None:
            registry.register(_DiskCollector(node, Path(disk_path)))
        ProcessCollector(registry=registry)

        self._server: asyncio.AbstractServer | None = None

    # -- recording -----------------------------------------------------------------------------
    def observe_job(self, format: str, status: str, duration_s: float) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}; choose one of {', '.join(JOB_STATUSES)}")
        self._duration.labels(self.node, format, status).observe(max(0.0, duration_s))
        self._processed.labels(self.node, status).inc()

    def count_stall(self) -> None:
        self._stalls.inc()

    def set_disk_full(self, full: bool) -> None:
        self._disk_full.set(1 if full else 0)

    def count_hand_back(self, reason: str) -> None:
        if reason not in HAND_BACK_REASONS:
            raise ValueError(f"unknown hand-back reason {reason!r}; choose one of {', '.join(HAND_BACK_REASONS)}")
        self._handed_back.labels(self.node, reason).inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(max(0.0, seconds))  # clocks of producer and node may disagree

    def set_active(self, n: int) -> None:
        self._active.set(n)

    def set_system(self, cpu: float, mem: float) -> None:
        self._cpu.set(cpu)
        self._memory.set(mem)

    def set_redis_outage(self, seconds: float) -> None:
        self._redis_outage.set(seconds)

    def set_queue_depth(self, depths: Mapping[str, int]) -> None:
        """Store per-state job counts (e.g. from BullMQ's getJobCounts); unknown states are kept too."""
        for state, count in depths.items():
            self._queue.labels(state).set(count)

    # -- exposing ------------------------------------------------------------------------------
    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the ``Accept`` header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """``render`` after ``on_scrape`` refreshed what is read on demand (bounded in time)."""
        if self.on_scrape is not None:
            try:
                await asyncio.wait_for(self.on_scrape(), SCRAPE_REFRESH_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # serve the last numbers rather than nothing
                log.debug("node %s: refreshing metrics before a scrape failed: %r", self.node, exc)
        return self.render(accept)

    def health_report(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status code and JSON body of ``/health``."""
        try:
            report = dict(self.health())
        except Exception as exc:  # a broken health check is itself unhealthy
            log.exception("health check of node %s failed", self.node)
            return 503, {"status": "error", "node": self.node, "error": str(exc)}
        report.setdefault("status", "ok")
        report.setdefault("running", 0)
        report["node"] = self.node
        return (503 if report["status"] in UNHEALTHY_STATUSES else 200), report

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on the running loop; port 0 picks a free one. Returns the real port."""
        if self._server is not None:
            raise RuntimeError(f"metrics server of node {self.node} is already running")
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (``Connection: close``), which is all Prometheus needs."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, path, headers = _parse_head(head)
            if method not in ("GET", "HEAD"):
                code, body, content_type = 405, b"only GET: try GET /metrics or /health\n", "text/plain"
            elif path == "/metrics":
                code = 200
                body, content_type = await self.scrape(headers.get("accept", ""))
            elif path == "/health":
                code, report = self.health_report()
                body, content_type = json.dumps(report).encode(), "application/json"
            else:
                code, body, content_type = 404, b"not found: try /metrics or /health\n", "text/plain"
            writer.write(_response(code, content_type, b"" if method == "HEAD" else body, len(body)))
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ) as exc:
            log.debug("metrics: dropped a bad or slow request: %r", exc)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _DiskCollector:
    """Free and total bytes of the disk holding the node's work dir, read at scrape time."""

    def __init__(self, node: str, path: Path) -> None:
        self.node, self.path = node, path

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # values come from the disk at scrape time; nothing to check at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            usage = shutil.disk_usage(self.path)
        except OSError as exc:  # the work dir vanished: no numbers rather than wrong ones
            log.debug("disk usage of %s unavailable: %s", self.path, exc)
            return
        for name, help_text, value in (
            ("worker_disk_free_bytes", "Free space of the disk holding the node's work dir", usage.free),
            ("worker_disk_total_bytes", "Size of the disk holding the node's work dir", usage.total),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["node"])
            family.add_metric([self.node], value)
            yield family


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)  # ValueError on a malformed request line
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, urlsplit(target).path, headers


def _response(code: int, content_type: str, body: bytes, length: int) -> bytes:
    head = (
        f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\nServer: encodeflow-node\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
