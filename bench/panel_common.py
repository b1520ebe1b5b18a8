"""What the panel's benchmarks share: a virtual X display, CPU accounting of processes, the GUI
event-loop stall probe, and a hook that runs the real ``app.main.main()`` with a driver attached.

The panel benchmarks run the desktop app as it ships: ``app.main.main()`` builds the window exactly
as ``python main.py`` does. A benchmark's app process installs :func:`hook_exec` first, so that
its driver (the stall probe, the page switching, the clock stamps) starts the moment the app
enters its event loop, after ``window.show()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil
from common import percentile

# -- a display ---------------------------------------------------------------------------------


@contextlib.contextmanager
def xvfb_display(size: str = "1920x1080x24") -> Iterator[tuple[str, int]]:
    """A private Xvfb server; yields ``(DISPLAY, pid)``. ``-displayfd`` picks a free display."""
    binary = shutil.which("Xvfb")
    if binary is None:
        raise RuntimeError("Xvfb is not installed; use --platform offscreen")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", size, "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 15
    try:
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
        if not number.strip():
            raise RuntimeError("Xvfb did not report its display number")
        yield f":{number.decode().strip()}", proc.pid
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def display(platform: str) -> Iterator[dict]:
    """Environment variables for a Qt app child on ``platform`` (``xvfb`` or ``offscreen``), and
    ``pid`` of the X server (``None`` offscreen)."""
    if platform == "xvfb":
        with xvfb_display() as (name, pid):
            yield {
                "env": {"DISPLAY": name, "QT_QPA_PLATFORM": "xcb"},
                "pid": pid,
                "description": "Xvfb 1920x1080x24 (Qt xcb platform, a real X11 window)",
            }
    else:
        yield {
            "env": {"QT_QPA_PLATFORM": "offscreen"},
            "pid": None,
            "description": "Qt offscreen platform (widgets paint into an in-memory backing store)",
        }


def default_platform() -> str:
    return "xvfb" if shutil.which("Xvfb") else "offscreen"


# -- CPU -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """user + system CPU seconds of a process (and of its live and reaped children with ``children``)."""
    if not pid:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *(proc.children(recursive=True) if children else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for one in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = one.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if children else 0.0)
    return total


class CpuWindow:
    """CPU seconds of named processes over a span, plus what the rest of the machine used.

    ``foreign`` is the machine's busy time (user, nice, system, irq, softirq of all cores) minus that
    of every named process and of this benchmark process: the other engineers' load on a shared box.
    """

    def __init__(self, pids: dict[str, int | None], own_children: Iterable[str] = ()):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.own_children = set(own_children)  # names whose children count with them (a node's FFmpeg)
        self._start: dict[str, float] = {}

    @staticmethod
    def _machine() -> tuple[float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return busy, getattr(t, "steal", 0.0)

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid, name in self.own_children) for name, pid in self.pids.items()}
        values["bench"] = cpu_seconds(os.getpid())
        values["_busy"], values["_steal"] = self._machine()
        values["_t"] = time.monotonic()
        return values

    def start(self) -> CpuWindow:
        self._start = self._read()
        return self

    def stop(self) -> dict:
        end = self._read()
        span = end["_t"] - self._start["_t"]
        used = {name: end[name] - self._start[name] for name in end if not name.startswith("_")}
        busy = end["_busy"] - self._start["_busy"]
        return {
            "span_s": round(span, 3),
            "cpu_s": {name: round(value, 3) for name, value in used.items()},
            "percent_of_one_core": {name: round(100 * value / span, 2) for name, value in used.items()},
            "foreign_cpu_s": round(max(0.0, busy - sum(used.values())), 3),
            "foreign_percent_of_one_core": round(100 * max(0.0, busy - sum(used.values())) / span, 2),
            "steal_s": round(end["_steal"] - self._start["_steal"], 3),
            "machine_cores": psutil.cpu_count(),
        }


# -- the GUI thread's stalls -----------------------------------------------------------------


class StallProbe:
    """A precise 10 ms ``QTimer`` on the GUI thread; each tick records the gap since the previous
    one. A stall is the gap minus the interval: how long the event loop could not run a timer."""

    def __init__(self, interval_ms: int = 10, label: Callable[[], str] | None = None):
        from PySide6.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.label = label or (lambda: "")
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps_ms: list[float] = []
        self.ticks_at: list[float] = []  # epoch s of each tick (to line stalls up with other events)
        self.labels: list[str] = []
        self._last: float | None = None
        self.started_at = self.stopped_at = None

    def start(self) -> None:
        self._last = time.perf_counter()
        self.started_at = time.time()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.stopped_at = time.time()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps_ms.append((now - self._last) * 1000)
        self.ticks_at.append(time.time())
        self.labels.append(self.label())
        self._last = now

    @property
    def stalls_ms(self) -> list[float]:
        return [max(0.0, gap - self.interval_ms) for gap in self.gaps_ms]

    def summary(self, top: int = 15) -> dict:
        stalls = self.stalls_ms
        worst = sorted(range(len(stalls)), key=stalls.__getitem__, reverse=True)[:top]
        span = (self.stopped_at or time.time()) - self.started_at
        return {
            "ticks": len(stalls),
            "expected_ticks": round(span * 1000 / self.interval_ms),
            "max_ms": round(max(stalls), 2) if stalls else None,
            "p99_ms": round(percentile(stalls, 99), 2) if stalls else None,
            "p90_ms": round(percentile(stalls, 90), 2) if stalls else None,
            "p50_ms": round(percentile(stalls, 50), 2) if stalls else None,
            "over_16ms": sum(1 for s in stalls if s > 16),
            "over_50ms": sum(1 for s in stalls if s > 50),
            "worst": [
                {
                    "stall_ms": round(stalls[i], 2),
                    "ended_at_s": round(self.ticks_at[i] - self.started_at, 3),
                    "during": self.labels[i],
                }
                for i in worst
            ],
        }


class StackSampler:
    """While the GUI thread is stalled (no probe tick for ``threshold_ms``), record its Python stack
    every ``every_ms`` from a watcher thread: where the stall's time goes. Used only in profiling runs
    (the watcher itself costs CPU)."""

    def __init__(self, probe: StallProbe, threshold_ms: float = 25.0, every_ms: float = 5.0, depth: int = 12):
        import threading

        self.probe = probe
        self.threshold = threshold_ms / 1000
        self.every = every_ms / 1000
        self.depth = depth
        self.main_id = threading.main_thread().ident
        self.samples: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-stack-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        import sys
        import traceback

        while not self._stop.wait(self.every):
            last = self.probe._last
            if last is None or time.perf_counter() - last < self.threshold:
                continue
            frame = sys._current_frames().get(self.main_id)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-self.depth :]
            key = " <- ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(stack))
            self.samples[key] = self.samples.get(key, 0) + 1

    def top(self, n: int = 15) -> list[dict]:
        total = sum(self.samples.values()) or 1
        ranked = sorted(self.samples.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [{"samples": count, "share": round(count / total, 3), "stack": stack} for stack, count in ranked]


def _short(filename: str) -> str:
    """A file name without the machine's paths: ``app/...``, ``farm/...``, or ``<pkg>/...`` for libraries."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    for anchor in ("app", "farm", "farm_node", "bench"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return Path(filename).name


def profile_rows(stats, limit: int = 25, sort: str = "cumulative") -> list[dict]:
    """The top rows of a ``pstats.Stats``, without the machine's paths."""
    stats.sort_stats(sort)
    rows = []
    for func in stats.fcn_list[:limit]:
        cc, nc, tt, ct, _callers = stats.stats[func]
        filename, line, name = func
        rows.append(
            {
                "function": f"{_short(filename)}:{line} {name}" if filename != "~" else name,
                "calls": nc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
            }
        )
    return rows


# -- running the real app with a driver ------------------------------------------------------


def hook_exec(
    on_loop: Callable[[object, object], None], before_loop: Callable[[object, object], None] | None = None
) -> None:
    """Make ``QApplication.exec()`` call ``before_loop(app, main_window)`` (if given) and then
    ``on_loop(app, main_window)`` from a zero timer, so that it runs in the first iteration of the
    event loop; then run the loop as usual."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    original = QApplication.exec

    def exec_with_driver(self, *args):
        from app.main_window import MainWindow

        window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))
        if before_loop is not None:
            before_loop(self, window)
        QTimer.singleShot(0, lambda: on_loop(self, window))
        return original(*args)

    QApplication.exec = exec_with_driver


def child_env(extra: dict[str, str], root: Path) -> dict[str, str]:
    """The environment of an app child: this one (the isolated data dir and config), with the panel's
    QSettings, keyring and caches under ``root`` so that nothing of the user's is read or written."""
    env = dict(os.environ)
    for name in ("config", "cache", "data", "state"):
        (root / f"xdg-{name}").mkdir(exist_ok=True)
    env.update(
        {
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "XDG_DATA_HOME": str(root / "xdg-data"),
            "XDG_STATE_HOME": str(root / "xdg-state"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env
