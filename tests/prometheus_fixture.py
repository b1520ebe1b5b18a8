"""A real Prometheus server for tests (Debian's ``prometheus`` package), scraping what a test names.

    def test_x(prometheus_server):
        url = prometheus_server(["127.0.0.1:9464"])   # scrapes every second
        ...

Tests that need it skip with the reason where the binary is missing (CI installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest

from farm.base.ports import free_port


def required_binary(name: str, package: str) -> str:
    """The path of a tool a test needs; skip without it, but fail under CI, which installs it (.ci/run)."""
    binary = shutil.which(name)
    if binary is None:
        message = f"no {name} binary (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def promtool() -> str:
    return required_binary("promtool", "prometheus")


@pytest.fixture
def prometheus_server(tmp_path):
    binary = required_binary("prometheus", "prometheus")
    started: list[subprocess.Popen] = []

    def start(targets: list[str], *, rule_files: list[str] = (), interval: str = "1s") -> str:
        port = free_port()
        config = tmp_path / f"prometheus-{port}.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML: no YAML library needed
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "rule_files": list(rule_files),
                    # The job name of every config in packaging/prometheus: alerts.yml selects nodes by it.
                    "scrape_configs": [{"job_name": "farm-nodes", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        log = (tmp_path / f"prometheus-{port}.log").open("w")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / f'tsdb-{port}'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / f"prometheus-{port}.log").read_text()
                raise RuntimeError(f"prometheus did not start: {log_text[-2000:]}")
            time.sleep(0.2)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
