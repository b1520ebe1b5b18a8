"""What the pages are given: settings, the farm client, presets, and where Redis is.

Everything here blocks (network, database, storage): call it through ``BackgroundRunner``, never
from a slot directly.
"""

from __future__ import annotations

import threading

from farm.base.settings import Settings
from farm.client import Farm
from farm.domain.jobspec import PresetStore


class AppServices:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.farm = Farm(settings, start_embedded=False)
        self.presets = PresetStore(settings.data_dir / "presets.toml")
        self._lock = threading.Lock()

    def redis_url(self) -> str:
        """The farm's Redis: the configured one, or the local farm's once it is up (raises until then)."""
        return self.farm.redis_url

    def open(self) -> None:
        """Open the database and storage once, up front, so pool threads never race to do it."""
        with self._lock:
            self.farm.open()

    def replace_settings(self, settings: Settings) -> None:
        """After the Settings page saved new URLs: later calls use them."""
        with self._lock:
            self.farm.close()
            self.settings = settings
            self.farm = Farm(settings, start_embedded=False)
            self.presets = PresetStore(settings.data_dir / "presets.toml")

    def close(self) -> None:
        self.farm.close()
