"""The Prometheus exporter, scraped over real HTTP as Prometheus would."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm_node.metrics import NodeMetrics


@pytest.fixture
def loop():
    """An event loop on its own thread, standing in for the node's: the test talks HTTP to it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture
def served(loop):
    """start(metrics) -> base URL; every server started is closed after the test."""
    started = []

    def start(metrics: NodeMetrics) -> str:
        port = loop(metrics.serve("127.0.0.1", 0))
        started.append(metrics)
        return f"http://127.0.0.1:{port}"

    yield start
    for metrics in started:
        loop(metrics.close())


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples_of(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_serves_what_the_node_recorded(served):
    metrics = NodeMetrics("render-01", version="0.1.0", ffmpeg_version="7.0.2", ffmpeg_path="/usr/bin/ffmpeg")
    base = served(metrics)
    metrics.observe_job("mp4", "success", 42.0)
    metrics.observe_job("webm", "failed", 3.0)
    metrics.observe_queue_wait(2.5)
    metrics.set_active(2)
    metrics.set_system(37.5, 0.42)
    metrics.set_queue_depth({"waiting": 5, "active": 2, "failed": 1, "delayed": 0})

    status, content_type, text = get(f"{base}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'workers_jobs_processed_total{node="render-01",status="success"} 1.0' in text

    node = ("node", "render-01")
    values = samples_of(text)
    assert values[("worker_cpu_usage", frozenset({node}))] == 37.5
    assert values[("worker_memory_usage_ratio", frozenset({node}))] == 0.42
    assert values[("worker_active_jobs", frozenset({node}))] == 2
    mp4_success = frozenset({node, ("format", "mp4"), ("status", "success")})
    assert values[("worker_job_duration_seconds_count", mp4_success)] == 1
    assert values[("worker_job_duration_seconds_sum", mp4_success)] == 42.0
    assert values[("worker_job_duration_seconds_bucket", mp4_success | {("le", "60.0")})] == 1
    assert values[("worker_job_duration_seconds_bucket", mp4_success | {("le", "30.0")})] == 0
    assert values[("worker_job_duration_seconds_bucket", mp4_success | {("le", "14400.0")})] == 1
    assert values[("workers_jobs_processed_total", frozenset({node, ("status", "failed")}))] == 1
    assert values[("workers_jobs_processed_total", frozenset({node, ("status", "cancelled")}))] == 0
    assert values[("worker_job_queue_wait_seconds_count", frozenset({node}))] == 1
    assert values[("worker_ffmpeg_stalls_total", frozenset({node}))] == 0  # from the start, for rate()
    for state, count in {"waiting": 5, "active": 2, "failed": 1, "delayed": 0}.items():
        assert values[("queue_jobs", frozenset({("state", state)}))] == count
    build = frozenset({("version", "0.1.0"), ("ffmpeg_version", "7.0.2"), ("ffmpeg_path", "/usr/bin/ffmpeg"), node})
    assert values[("encodeflow_build_info", build)] == 1


def test_openmetrics_is_served_when_asked_for(served):
    base = served(NodeMetrics("render-01"))
    status, content_type, text = get(f"{base}/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


def test_health_reports_the_node_and_turns_503_when_unhealthy(served):
    report = {"status": "ok", "running": 1}
    base = served(NodeMetrics("render-01", health=lambda: report))

    status, content_type, body = get(f"{base}/health")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "node": "render-01", "running": 1}

    report.update(status="draining", running=0)
    assert get(f"{base}/health")[0] == 200

    report.update(status="unhealthy", redis_unreachable_s=75.0)
    status, _, body = get(f"{base}/health")
    assert status == 503 and json.loads(body)["redis_unreachable_s"] == 75.0


def test_a_failing_health_check_is_a_503(served):
    def broken():
        raise RuntimeError("boom")

    status, _, body = get(f"{served(NodeMetrics('render-01', health=broken))}/health")
    assert status == 503 and json.loads(body) == {"status": "error", "node": "render-01", "error": "boom"}


def test_unknown_paths_are_404(served):
    assert get(f"{served(NodeMetrics('render-01'))}/nope")[0] == 404


def test_two_nodes_in_one_process_keep_their_own_metrics(served):
    first, second = NodeMetrics("node-a"), NodeMetrics("node-b")
    url_a, url_b = served(first), served(second)
    first.set_active(3)

    assert url_a != url_b
    assert 'worker_active_jobs{node="node-a"} 3.0' in get(f"{url_a}/metrics")[2]
    text_b = get(f"{url_b}/metrics")[2]
    assert 'worker_active_jobs{node="node-b"} 0.0' in text_b and "node-a" not in text_b


def test_unknown_job_status_is_refused():
    with pytest.raises(ValueError, match="success, failed, cancelled"):
        NodeMetrics("render-01").observe_job("mp4", "exploded", 1.0)


def test_close_frees_the_port_and_allows_a_restart(loop):
    metrics = NodeMetrics("render-01")
    port = loop(metrics.serve("127.0.0.1", 0))
    with pytest.raises(RuntimeError, match="already running"):
        loop(metrics.serve("127.0.0.1", 0))
    loop(metrics.close())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    port = loop(metrics.serve("127.0.0.1", port))
    try:
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
    finally:
        loop(metrics.close())


def test_disk_of_the_work_dir_is_read_at_scrape_time(served, tmp_path):
    metrics = NodeMetrics("render-01", disk_path=tmp_path, concurrency=3)
    values = samples_of(get(f"{served(metrics)}/metrics")[2])
    node = frozenset({("node", "render-01")})
    usage = shutil.disk_usage(tmp_path)
    assert values[("worker_disk_total_bytes", node)] == usage.total
    # Other processes write to the same disk meanwhile: the free space read is near the one here.
    assert abs(values[("worker_disk_free_bytes", node)] - usage.free) < 0.01 * usage.total
    assert values[("worker_concurrency", node)] == 3


def test_a_vanished_work_dir_drops_the_disk_metrics_but_not_the_page(served, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    base = served(NodeMetrics("render-01", disk_path=work))
    work.rmdir()
    status, _, text = get(f"{base}/metrics")
    assert status == 200 and "worker_disk_free_bytes" not in text and "worker_cpu_usage" in text


def test_queue_depth_is_refreshed_by_each_scrape(served):
    reads = []

    async def read_queue():
        reads.append(len(reads) + 1)
        metrics.set_queue_depth({"waiting": 10 * len(reads)})

    metrics = NodeMetrics("render-01", on_scrape=read_queue)
    base = served(metrics)
    assert reads == []  # nothing is read until someone scrapes
    first = samples_of(get(f"{base}/metrics")[2])
    second = samples_of(get(f"{base}/metrics")[2])
    waiting = ("queue_jobs", frozenset({("state", "waiting")}))
    assert (first[waiting], second[waiting]) == (10, 20)
    assert get(f"{base}/health")[0] == 200 and reads == [1, 2]  # /health reads no queue


def test_a_queue_that_does_not_answer_leaves_the_last_numbers(served):
    answered = asyncio.Event()

    async def read_queue():
        if not answered.is_set():
            answered.set()
            metrics.set_queue_depth({"waiting": 7})
            return
        await asyncio.sleep(3600)  # Redis hangs: the scrape must not

    metrics = NodeMetrics("render-01", on_scrape=read_queue)
    base = served(metrics)
    get(f"{base}/metrics")
    status, _, text = get(f"{base}/metrics")
    assert status == 200
    assert samples_of(text)[("queue_jobs", frozenset({("state", "waiting")}))] == 7


def test_redis_outage_is_exported(served):
    metrics = NodeMetrics("render-01")
    metrics.set_redis_outage(42.5)
    values = samples_of(get(f"{served(metrics)}/metrics")[2])
    assert values[("worker_redis_unreachable_seconds", frozenset({("node", "render-01")}))] == 42.5


def test_a_garbled_request_is_dropped_and_the_server_keeps_serving(served):
    base = served(NodeMetrics("render-01"))
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(100) == b""  # closed without an answer
    assert get(f"{base}/metrics")[0] == 200


def test_only_get_is_answered(served):
    base = served(NodeMetrics("render-01"))
    request = urllib.request.Request(f"{base}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 405
