"""A Redis that accepts connections but never answers (a hung server, a link that drops packets).

Real ``farm-node`` processes behind a ``FaultyLink`` to the machine's Redis, stalled by the test.
A node starting against it says so within seconds and exits 1 (an outage: a service manager
restarts it); SIGTERM stops it during that start-up, and stops a running node whose Redis goes
silent, within a bound, however far its drain got.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from farm.base.settings import ENV_VARS
from tests.e2e.helpers import LONG_JOB, run_cli, submit, wait_for
from tests.faults import FaultyLink


@pytest.fixture
def silent_link(redis_url):
    """A link to the test's Redis; ``ENCODEFLOW_REDIS_URL`` points at it."""
    from urllib.parse import urlsplit

    server = urlsplit(redis_url)
    with FaultyLink(server.hostname, server.port or 6379) as link:
        link.url = f"redis://127.0.0.1:{link.port}{server.path or '/0'}"
        os.environ[ENV_VARS["redis_url"]] = link.url  # monkeypatched by redis_url: restored after the test
        yield link


def start_node(log, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "farm_node", "--name", "silent-test", "--no-metrics", *extra],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def test_a_node_starting_against_a_silent_redis_says_so_and_exits_1(silent_link, tmp_path):
    silent_link.stall()
    log = tmp_path / "node.log"
    started = time.monotonic()
    code = wait_exit(start_node(log), timeout=30)
    took = time.monotonic() - started

    assert code == 1, f"exit {code} after {took:.0f} s: {log.read_text()[-1500:]}"
    lines = log.read_text().strip().splitlines()
    assert f"no answer from Redis at {silent_link.url} within 5 s" in lines[-1]
    assert len([line for line in lines if " ERROR " in line]) == 1, lines


def test_sigterm_stops_a_node_still_starting_against_a_silent_redis(silent_link, tmp_path):
    silent_link.stall()
    log = tmp_path / "node.log"
    node = start_node(log)
    wait_for(
        lambda: silent_link.accepted > 0 or node.poll() is not None, timeout=30, what="the node to connect to Redis"
    )
    node.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = wait_exit(node, timeout=10)

    assert code == 0, f"exit {code}: {log.read_text()[-1500:]}"
    assert time.monotonic() - signalled < 5
    assert "stopping: the node was still starting" in log.read_text()


@pytest.mark.slow
def test_sigterm_stops_a_busy_node_whose_redis_goes_silent(silent_link, long_clip, tmp_path):
    log = tmp_path / "node.log"
    node = start_node(log)
    job_id = submit(long_clip, *LONG_JOB)
    wait_for(
        lambda: '"status": "active"' in run_cli("show", job_id, "--json").stdout or node.poll() is not None,
        timeout=60,
        what="the job to start",
    )
    assert node.poll() is None, log.read_text()[-1500:]

    silent_link.stall()
    node.send_signal(signal.SIGTERM)  # drain: would wait for the job
    time.sleep(1)
    node.send_signal(signal.SIGTERM)  # stop now: FFmpeg stops, the job goes back to a Redis that is silent
    signalled = time.monotonic()
    code = wait_exit(node, timeout=120)

    assert code is not None, f"still running 120 s after the second SIGTERM: {log.read_text()[-2000:]}"
    assert time.monotonic() - signalled < 60, log.read_text()[-2000:]
    text = log.read_text()
    assert f"job {job_id}: could not hand it back" in text and "node silent-test stopped" in text
    # The job is not lost: its lock expires and the queue gives it to the next node (the row waits).
    assert '"status": "queued"' in run_cli("show", job_id, "--json").stdout


# -- what the CLI says -------------------------------------------------------------------------------


def test_the_cli_says_what_it_saw_of_a_silent_local_farm(settings):
    """The local farm runs, but its Redis is stopped (SIGSTOP): not "the local farm is not running"."""
    from farm.base.redact import redact_url
    from farm.services.embedded import ensure_embedded_redis

    server = ensure_embedded_redis(settings)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        results = [run_cli(*args) for args in (("nodes",), ("nodes", "--json"), ("node", "pause", "somebody"))]
    finally:
        os.kill(server.pid, signal.SIGCONT)
    for result in results:
        assert result.returncode == 1
        assert f"no answer from Redis at {redact_url(server.url)} within 2 s" in result.stderr
        assert "not running" not in result.stderr and ":***@" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_cli_says_what_it_saw_of_a_silent_redis(silent_link, make_clip):
    silent_link.stall()
    for args, within in (
        (("nodes",), 10),
        (("node", "drain", "somebody"), 10),
        (("submit", str(make_clip(160, 120, 1.0))), 3),
    ):
        result = run_cli(*args)
        assert result.returncode == 1, result.stderr
        assert f"no answer from Redis at {silent_link.url} within {within} s" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
