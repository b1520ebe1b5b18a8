"""With no Redis configured the app starts the embedded farm, shows its node, and stops it on quit."""

from __future__ import annotations

from app.local_farm import LocalFarmLauncher
from farm.services.embedded import running_embedded_redis


def test_launcher_starts_a_node_that_the_panel_shows_and_stops_it(qtbot, services, runner, hub):
    launcher = LocalFarmLauncher(services, runner)
    assert launcher.needed, "no ENCODEFLOW_REDIS_URL: the app must run its own farm"
    with qtbot.waitSignal(launcher.started, timeout=30_000) as started:
        launcher.start()
    assert "Local farm started" in started.args[0]
    qtbot.waitUntil(
        lambda: any(n.name.endswith("-desktop-1") and n.status == "idle" for n in hub.nodes), timeout=30_000
    )
    node = launcher.farm.node_info()[0]

    launcher.stop(keep_running=False)
    assert launcher.farm is None
    qtbot.waitUntil(lambda: all(n.status == "offline" for n in hub.nodes if n.name == node["name"]), timeout=15_000)
    assert running_embedded_redis(services.settings) is not None, "Redis the app did not start is left alone"


def test_keep_running_leaves_the_node_up(qtbot, services, runner, hub):
    launcher = LocalFarmLauncher(services, runner)
    with qtbot.waitSignal(launcher.started, timeout=30_000):
        launcher.start()
    farm = launcher.farm
    launcher.stop(keep_running=True)
    assert all(info["alive"] for info in farm.node_info()), "kept running, as chosen in Settings"
    farm.stop(drain_timeout=10)  # clean up for the next test


def test_a_configured_redis_needs_no_local_farm(services, runner, monkeypatch):
    services.settings = services.settings.replace(redis_url="redis://127.0.0.1:6379/0")
    launcher = LocalFarmLauncher(services, runner)
    assert not launcher.needed
    launcher.start()
    assert launcher.farm is None
