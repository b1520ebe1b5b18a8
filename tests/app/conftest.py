"""Fixtures for the panel's tests: real widgets (offscreen), on a real local farm.

``services`` gives AppServices on the test's data dir (embedded Redis, SQLite, folder storage);
``local_farm_app`` also starts one ``farm-node`` process. ``hub`` starts the listener threads, and
the autouse ``no_leftover_threads`` fails any test that leaves one of them (or a node) running.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import psutil
import pytest

from farm.base.settings import Settings
from farm.services.embedded import ensure_embedded_redis
from farm.services.local_nodes import LocalFarm


@pytest.fixture(autouse=True)
def private_qsettings(tmp_path):
    """QSettings (window geometry, notification preferences) in the test's own folder."""
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.NativeFormat, QSettings.UserScope, str(tmp_path / "qsettings"))
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "qsettings"))
    yield


@pytest.fixture(autouse=True)
def no_leftover_threads(qapp):
    # Only what this test started counts: under pytest-xdist the worker ran other tests before it.
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    yield
    from app.listeners import live_threads

    leftover = live_threads()
    for thread in leftover:
        thread.stop()
    assert not leftover, f"a test left listener threads running: {leftover}"
    children = [
        c
        for c in psutil.Process().children(recursive=True)
        if c.pid not in before and c.status() != psutil.STATUS_ZOMBIE
    ]
    assert not [c for c in children if "farm_node" in " ".join(c.cmdline())], f"a node was left running: {children}"


@pytest.fixture
def app_settings(data_dir) -> Settings:
    return Settings.load()


@pytest.fixture
def embedded_redis(app_settings):
    server = ensure_embedded_redis(app_settings)
    yield server
    server.stop()


@pytest.fixture
def services(app_settings, embedded_redis):
    from app.services import AppServices

    services = AppServices(app_settings)
    services.open()
    yield services
    services.close()


@pytest.fixture
def runner(qapp):
    from app.runner import BackgroundRunner

    runner = BackgroundRunner()
    yield runner
    assert runner.wait(30_000), "background tasks did not finish"
    qapp.processEvents()


@pytest.fixture
def hub(services, qapp):
    from app.hub import FarmHub

    hub = FarmHub(services, poll_interval=0.5)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def local_node(app_settings, embedded_redis):
    """One farm-node process on the test's local farm (what the app starts on launch)."""
    farm = LocalFarm(app_settings, nodes=1, node_prefix="test-node")
    farm.start()
    yield farm
    farm.stop(drain_timeout=1)  # a job still running goes back to the queue: no test waits for it here
