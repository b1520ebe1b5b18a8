"""The panel's own preferences, kept in ``QSettings`` (they concern this desktop, not the farm).

Which setting lives where:

- ``farm.base.settings.Settings`` (the TOML config file that the CLI and the nodes read too): the
  services' URLs, the queue, the default preset, whether to keep the local farm running after
  quitting, and ``notifications``, the master switch for tray notifications.
- here (``QSettings``, organisation and application "EncodeFlow"): which notifications to show
  (``notify/completed``, ``notify/failed``) and ``window/close_to_tray``. The tray reads these;
  it shows a notice only when the master switch is on and the matching preference is too.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings

ORGANIZATION = "EncodeFlow"
APPLICATION = "EncodeFlow"

NOTIFY_COMPLETED = "notify/completed"
NOTIFY_FAILED = "notify/failed"
CLOSE_TO_TRAY = "window/close_to_tray"

DEFAULTS = {NOTIFY_COMPLETED: True, NOTIFY_FAILED: True, CLOSE_TO_TRAY: False}


class Preferences:
    """Typed access to the panel's preferences; give it a ``QSettings`` to use another store (tests)."""

    def __init__(self, store: QSettings | None = None):
        self.store = store if store is not None else QSettings(ORGANIZATION, APPLICATION)

    def _bool(self, key: str) -> bool:
        value = self.store.value(key, DEFAULTS[key])
        # INI files give back the strings "true"/"false".
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)

    @property
    def notify_completed(self) -> bool:
        return self._bool(NOTIFY_COMPLETED)

    @notify_completed.setter
    def notify_completed(self, value: bool) -> None:
        self.store.setValue(NOTIFY_COMPLETED, bool(value))

    @property
    def notify_failed(self) -> bool:
        return self._bool(NOTIFY_FAILED)

    @notify_failed.setter
    def notify_failed(self, value: bool) -> None:
        self.store.setValue(NOTIFY_FAILED, bool(value))

    @property
    def close_to_tray(self) -> bool:
        return self._bool(CLOSE_TO_TRAY)

    @close_to_tray.setter
    def close_to_tray(self, value: bool) -> None:
        self.store.setValue(CLOSE_TO_TRAY, bool(value))

    def sync(self) -> None:
        self.store.sync()
