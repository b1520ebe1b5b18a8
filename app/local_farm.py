"""The local farm the app starts when no Redis is configured: embedded Redis + one farm node.

Starting and stopping block (processes, a Redis handshake), so both run in the background runner.
On quit the app stops what it started, unless the user chose to keep the farm running; the node
and Redis then outlive the app (they are in their own session), and the next launch reuses them.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from farm.services.local_nodes import LocalFarm

log = logging.getLogger(__name__)


class LocalFarmLauncher(QObject):
    started = Signal(str)  # a line for the status bar
    failed = Signal(str)

    def __init__(self, services, runner, parent=None):
        super().__init__(parent)
        self.services = services
        self.runner = runner
        self.farm: LocalFarm | None = None

    @property
    def needed(self) -> bool:
        return self.services.settings.uses_embedded_redis

    def start(self) -> None:
        if not self.needed:
            return
        settings = self.services.settings

        def start_farm():
            if self.services.farm.local_redis_running() and _local_node_running(self.services):
                return None, "Local farm already running"
            farm = LocalFarm(settings, nodes=1, role="desktop")
            farm.start()
            return farm, "Local farm started (embedded Redis + 1 node)"

        def done(result):
            self.farm, message = result
            self.started.emit(message)

        self.runner.run(start_farm, done, lambda exc: self.failed.emit(f"Could not start the local farm: {exc}"))

    def stop(self, keep_running: bool) -> None:
        """Blocking; called once at quit, after the window's listeners stopped."""
        if self.farm is None:
            return
        if keep_running:
            log.info("leaving the local farm running, as chosen in Settings")
        else:
            self.farm.stop(drain_timeout=10)
        self.farm = None


def _local_node_running(services) -> bool:
    try:
        return any(n.online for n in services.farm.nodes())
    except Exception:
        return False
