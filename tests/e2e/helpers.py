"""Helpers for end-to-end tests: run the CLI as a user would, wait for a condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

# About 8 s of HEVC work on a 2-core machine: long enough to still be running when a test acts.
LONG_CLIP = dict(width=1280, height=720, seconds=12.0, name="node_control_long_720p.mp4")
LONG_JOB = ("--format", "hevc", "--resolution", "720p")


def run_cli(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(path, *options: str) -> str:
    """Submit one file with the CLI and return its job id."""
    result = run_cli("submit", str(path), *options, "--json")
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)[0]["id"]


def node_info(name: str) -> dict:
    """The node's entry in ``encodeflow nodes --json``."""
    result = run_cli("nodes", "--json")
    assert result.returncode == 0, result.stderr
    return next(n for n in json_lines(result.stdout) if n["name"] == name)


def metrics(node_name: str) -> dict[tuple[str, frozenset], float]:
    """The node's ``/metrics`` samples, by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(node_info(node_name)["metrics_url"], timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
