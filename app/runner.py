"""One way to do blocking work off the GUI thread: a thread pool whose results come back as signals.

``runner.run(task, on_done, on_error)`` runs ``task()`` on a pool thread; ``on_done(result)`` or
``on_error(exception)`` then runs on the GUI thread (the signals object lives there, so the
connection is queued). A task never touches a widget.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(object)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals):
        super().__init__()
        self.setAutoDelete(True)
        self.fn = fn
        self.signals = signals

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # handed to on_error on the GUI thread
            # The traceback goes with the exception to the GUI thread, where a handler may log it.
            exc.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
            self.signals.failed.emit(exc)
        else:
            self.signals.done.emit(result)


def _receiver_alive(callback: Callable[..., None]) -> bool:
    """False for a method of a widget that was deleted while its task ran (a closed window's page):
    calling it would touch a deleted C++ object. Other callables are always called."""
    owner = getattr(callback, "__self__", None)
    return not isinstance(owner, QObject) or shiboken6.isValid(owner)


class BackgroundRunner(QObject):
    """Runs blocking calls on a private ``QThreadPool``; ``busy`` counts tasks not yet finished."""

    def __init__(self, max_threads: int = 4, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._pending: set[_Signals] = set()

    @property
    def busy(self) -> int:
        return len(self._pending)

    def run(
        self,
        fn: Callable[[], Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        signals = _Signals()
        self._pending.add(signals)

        def finished(result: Any) -> None:
            self._pending.discard(signals)
            if on_done is not None and _receiver_alive(on_done):
                on_done(result)

        def failed(exc: Exception) -> None:
            self._pending.discard(signals)
            if on_error is not None:
                if _receiver_alive(on_error):
                    on_error(exc)
            else:
                log.warning("background task failed: %s\n%s", exc, getattr(exc, "traceback_text", ""))

        signals.done.connect(finished)
        signals.failed.connect(failed)
        self.pool.start(_Task(fn, signals))

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until every task has run (used at shutdown and in tests)."""
        return self.pool.waitForDone(msecs)
