"""The Prometheus files in packaging/prometheus, checked by Prometheus' own promtool.

promtool comes with Debian's ``prometheus`` package. Without it these tests skip with the reason;
under CI (which installs it, .ci/run) they fail instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "packaging" / "prometheus"
NODE_JOB = "farm-nodes"  # the job alerts.yml and the dashboard select nodes by


@pytest.fixture
def promtool(promtool):
    """promtool (the shared fixture's binary) run in packaging/prometheus."""

    def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
        return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)

    return run


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-studio.yml"])
def test_the_configs_pass_promtool_with_the_alerts_they_load(promtool, config, tmp_path):
    # promtool resolves rule_files next to the config, as Prometheus does: copy both, as installed.
    shutil.copy(PROMETHEUS / config, tmp_path / config)
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    result = promtool("check", "config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-studio.yml"])
def test_the_configs_scrape_nodes_under_the_job_the_alerts_use(config):
    jobs = {job["job_name"]: job for job in yaml.safe_load((PROMETHEUS / config).read_text())["scrape_configs"]}
    assert NODE_JOB in jobs
    assert f'job="{NODE_JOB}"' in (PROMETHEUS / "alerts.yml").read_text()


def test_the_studio_config_discovers_nodes_from_files_in_the_example_format():
    job = next(
        job
        for job in yaml.safe_load((PROMETHEUS / "prometheus-studio.yml").read_text())["scrape_configs"]
        if job["job_name"] == NODE_JOB
    )
    pattern = job["file_sd_configs"][0]["files"][0]
    assert pattern.endswith("*.yml")
    groups = yaml.safe_load((PROMETHEUS / "targets" / "nodes.example.yml").read_text())
    # Prometheus' file_sd format: a list of {targets: [host:port, ...], labels: {...}}.
    assert groups and all(set(group) <= {"targets", "labels"} for group in groups)
    for group in groups:
        for target in group["targets"]:
            host, _, port = target.rpartition(":")
            assert host and port == "9464", target


def test_the_alert_rules_pass_promtool(promtool):
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = [
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    for needed in (
        "EncodeFlowNodeDown",
        "EncodeFlowQueueBacklogGrowing",
        "EncodeFlowFailureRateHigh",
        "EncodeFlowNodeDiskAlmostFull",
        "EncodeFlowNoNodeUp",
    ):
        assert needed in names


def test_every_alert_is_unit_tested_firing_and_the_tests_pass(promtool):
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    fired = {check["alertname"] for check in checks if check["exp_alerts"]}
    quiet = {check["alertname"] for check in checks if not check["exp_alerts"]}
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert fired == alerts, f"alerts never shown firing: {alerts - fired}"
    assert quiet == alerts, f"alerts never shown staying quiet: {alerts - quiet}"


def test_a_broken_rule_test_fails_promtool(promtool, tmp_path):
    """The unit tests can fail: with a threshold moved, promtool reports the alert that changed."""
    rules = (PROMETHEUS / "alerts.yml").read_text()
    assert "< 0.10" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("< 0.10", "< 0.01"))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "EncodeFlowNodeDiskAlmostFull" in result.stdout + result.stderr
