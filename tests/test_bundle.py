"""The farm-node PyInstaller bundle, built from packaging/pyinstaller and run the way a node machine
runs it: with nothing from this Python environment and no FFmpeg or Qt from the system."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from farm import __version__
from farm.domain.media import probe
from tests.e2e.helpers import json_lines, run_cli, wait_for
from tests.files import one_at_a_time, run_folder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
QT_NAMES = ("pyside6", "shiboken6", "pyqtgraph", "libqt6", "pyqt5", "pyqt6")


@pytest.fixture(scope="session")
def node_bundle(tmp_path_factory) -> Path:
    """dist/farm-node/ built once per run by the build script (its build time: docs/benchmarks.md):
    the first pytest-xdist worker to need it builds it, the others wait for it."""
    out = run_folder(tmp_path_factory) / "bundle"
    out.mkdir(exist_ok=True)
    with one_at_a_time(out / ".lock"):
        if not (out / ".built").exists():
            result = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "packaging" / "pyinstaller" / "build.py"),
                    "node",
                    "--dist",
                    str(out / "dist"),
                    "--work",
                    str(out / "work"),
                ],
                capture_output=True,
                text=True,
                timeout=840,
            )
            assert result.returncode == 0, f"the build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
            (out / ".built").touch()
    return out / "dist" / "farm-node"


def test_both_programs_report_their_version(node_bundle):
    for program in ("farm-node", "encodeflow"):
        result = subprocess.run([str(node_bundle / program), "--version"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{program} {__version__}"


def test_no_qt_inside(node_bundle):
    from PyInstaller.archive.readers import pkg_archive_contents

    files = [p.relative_to(node_bundle).as_posix() for p in node_bundle.rglob("*")]
    modules = pkg_archive_contents(str(node_bundle / "farm-node"))  # the launcher and the PYZ's modules
    assert "farm_node.agent" in modules and "bullmq" in modules, "the archive listing should hold the node"
    qt = [name for name in files + modules if any(q in name.lower() for q in QT_NAMES)]
    assert qt == [], f"a node bundle must not carry Qt: {qt[:10]}"


def test_bundled_node_runs_a_real_job(node_bundle, redis_url, data_dir, make_clip, tmp_path):
    """SQLite and folder storage in the test's data dir, the test's Redis, and only the bundle's own
    FFmpeg: the node gets a PATH with nothing on it."""
    import redis

    from farm.base.settings import Settings
    from farm.services.registry import NodeRegistry

    settings = Settings.load()
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    log = tmp_path / "bundle-node.log"
    node = subprocess.Popen(
        [
            str(node_bundle / "farm-node"),
            "--name",
            "bundled-node",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        registry = NodeRegistry(redis.Redis.from_url(redis_url, decode_responses=True), settings.queue)
        registered = wait_for(
            lambda: [n for n in registry.nodes() if n.name == "bundled-node" and n.online],
            timeout=60,
            what=f"the bundled node to register (its log: {log})",
        )
        assert registered[0].ffmpeg_version, "the node should have found the bundled FFmpeg"

        clip = make_clip(640, 480, seconds=1.0, name="bundle_640x480.mp4")
        result = run_cli(
            "submit", str(clip), "--resolution", "360p", "--format", "mp4", "--wait", "--json", "--timeout", "300"
        )
        assert result.returncode == 0, f"{result.stderr}\nnode log:\n{log.read_text()[-3000:]}"
        (job,) = json_lines(result.stdout)
        assert job["status"] == "completed" and job["node"] == "bundled-node"

        download = run_cli("download", job["id"], str(tmp_path))
        assert download.returncode == 0, download.stderr
        info = probe(download.stdout.strip())
        assert (info.width, info.height) == (480, 360)
        assert info.video_codec == "h264" and info.audio_codec == "aac"
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)  # drain: no job running, so it exits at once
        try:
            code = node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
