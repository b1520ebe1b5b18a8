"""`encodeflow up`: a whole farm in the foreground until Ctrl-C, sharing one embedded Redis."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil

from farm.base.settings import Settings
from farm.services.embedded import running_embedded_redis
from tests.e2e.helpers import json_lines, run_cli, wait_for


def test_up_runs_nodes_until_ctrl_c_then_stops_everything(clip):
    settings = Settings.load()
    up = subprocess.Popen(
        [sys.executable, "-m", "farm", "up", "--nodes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        nodes = wait_for(lambda: _online(run_cli("nodes", "--json").stdout, 2), timeout=60, what="two nodes")
        assert all(n["status"] == "idle" for n in nodes)
        server = running_embedded_redis(settings)
        assert server is not None, "the farm's Redis must be the data dir's embedded one"

        result = run_cli("submit", str(clip), "--resolution", "360p", "--wait", "--json")
        assert result.returncode == 0, result.stderr
        assert json_lines(result.stdout)[0]["status"] == "completed"
        children = psutil.Process(up.pid).children(recursive=True)
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "local farm up: 2 node(s)" in output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert running_embedded_redis(settings) is None, "Redis started by `up` is stopped with it"


def _online(text: str, count: int):
    nodes = [n for n in json_lines(text) if n["status"] != "offline"]
    return nodes if len(nodes) == count else None
