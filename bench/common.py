"""What every benchmark shares: an isolated farm under a temp dir, generated clips, statistics,
a record of the machine it ran on, and the JSON file it leaves behind.

Each benchmark runs against a farm of its own (embedded Redis, SQLite and folder storage under a
fresh temp data dir, one ``farm-node`` process started by ``LocalFarm``), so a developer's own
config, queue or data never leaks in, and nothing is left behind. Results name no path of the
machine they ran on: commands are recorded with ``<input>``/``<output>`` placeholders.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

from farm.base.settings import CONFIG_ENV, ENV_VARS, Settings
from farm.domain.media import ffmpeg_version, find_ffmpeg
from farm.services.local_nodes import LocalFarm
from farm.services.registry import NodeRegistry

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# -- command line ------------------------------------------------------------------------------


def parse_args(
    name: str,
    description: str,
    runs: int,
    runs_help: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """``--runs``, ``--out`` and ``--keep``, plus what ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=description)
    parser.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help=f"where the JSON result goes (default bench/results/{name}.json)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp data dir (node log, Redis log, clips) and print where it is"
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


# -- an isolated farm --------------------------------------------------------------------------


@contextlib.contextmanager
def isolated_data_dir(name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh data dir and config file in a temp dir, with no ``ENCODEFLOW_*`` from the caller.

    The environment is changed for this process (and so for the nodes it starts) and restored after.
    """
    root = Path(tempfile.mkdtemp(prefix=f"encodeflow-bench-{name}-"))
    saved = dict(os.environ)
    for var in list(os.environ):
        if var.startswith("ENCODEFLOW_") or var.startswith("AWS_"):
            del os.environ[var]
    data_dir = root / "data"
    data_dir.mkdir()
    os.environ[ENV_VARS["data_dir"]] = str(data_dir)
    os.environ[CONFIG_ENV] = str(root / "config.toml")
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the isolated environment (embedded Redis, SQLite, folder storage)."""
    settings = Settings.load()
    return settings.replace(**overrides) if overrides else settings


@contextlib.contextmanager
def _fds_to(log_path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr at ``log_path`` while child processes are started,
    so the nodes ``LocalFarm`` starts log there instead of into the benchmark's summary."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def running_farm(settings: Settings, log_path: Path, timeout: float = 60.0) -> Iterator[LocalFarm]:
    """A ``LocalFarm`` with one node, returned once that node is registered and idle."""
    farm = LocalFarm(settings, nodes=1, node_prefix="bench")
    try:
        with _fds_to(log_path):
            farm.start()
        name = farm.node_info()[0]["name"]
        registry = NodeRegistry(redis.Redis.from_url(farm.redis.url, decode_responses=True), settings.queue)
        deadline = time.monotonic() + timeout
        while True:
            status = registry.node(name)
            if status is not None and status.status == "idle":
                break
            if not farm.node_info()[0]["alive"] or time.monotonic() > deadline:
                raise RuntimeError(f"node {name} did not come up; its log ends:\n{_tail(log_path)}")
            time.sleep(0.1)
        registry.redis.close()
        yield farm
    finally:
        farm.stop(drain_timeout=60)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- other load on the machine -----------------------------------------------------------------


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    """CPU seconds (user + system, reaped children included) of these processes; gone ones count 0."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class ForeignCpu:
    """CPU that processes other than the benchmark's own used over a span.

    On a shared machine, one run of a benchmark can overlap someone else's burst of work. This
    reads the machine's busy CPU time (``psutil.cpu_times``: user, nice, system, irq, softirq) and
    that of this process tree plus ``extra_pids`` (the embedded Redis) at both ends of a span;
    ``stop()`` returns seconds of CPU used by everything else, and the hypervisor's steal time.
    Children that exit during the span are counted once reaped (``children_user``/``_system``).
    """

    def __init__(self, extra_pids: Iterable[int | None] = ()):
        self.extra_pids = [pid for pid in extra_pids if pid]
        self._start: tuple[float, float, float, float] | None = None

    def _own(self) -> float:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        for pid in self.extra_pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        return cpu_seconds(procs)

    @staticmethod
    def _machine() -> tuple[float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return busy, getattr(t, "steal", 0.0)

    def start(self) -> ForeignCpu:
        self._start = (*self._machine(), self._own(), time.monotonic())
        return self

    def stop(self) -> dict[str, float]:
        busy0, steal0, own0, t0 = self._start
        busy, steal = self._machine()
        own, elapsed = self._own(), time.monotonic() - t0
        return {
            "foreign_cpu_s": round(max(0.0, (busy - busy0) - (own - own0)), 3),
            "own_cpu_s": round(own - own0, 3),
            "steal_s": round(steal - steal0, 3),
            "span_s": round(elapsed, 3),
        }


# -- clips -------------------------------------------------------------------------------------


def make_clip(path: Path, *, seconds: float, width: int, height: int, rate: int = 25) -> dict:
    """An H.264/AAC MP4 of FFmpeg's ``testsrc2`` pattern and a 440 Hz tone; returns how it was made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-shortest",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    return {
        "seconds": seconds,
        "width": width,
        "height": height,
        "fps": rate,
        "source": "lavfi testsrc2 + sine 440 Hz, libx264 veryfast yuv420p + AAC 128k, MP4",
        "bytes": path.stat().st_size,
        "made_in_s": round(time.perf_counter() - started, 2),
    }


# -- statistics --------------------------------------------------------------------------------


def percentile(samples: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the two nearest ranks (numpy's default)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(samples: list[float], digits: int = 3) -> dict[str, float]:
    """n, median (= p50), p90, p99, min, max, mean and stdev of the samples."""
    if not samples:
        return {"n": 0}
    out = {
        "n": len(samples),
        "median": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }
    return {k: (v if k == "n" else round(v, digits)) for k, v in out.items()}


# -- the record --------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _code_origin() -> str:
    import farm
    import farm_node

    where = {Path(m.__file__).resolve().parent.parent for m in (farm, farm_node)}
    if where == {REPO_ROOT}:
        return "this checkout"
    return "outside this checkout (PYTHONPATH): " + ", ".join(sorted(p.name for p in where))


def environment(redis_url: str | None = None) -> dict[str, Any]:
    """The machine and software a result was measured with (no paths, no host name)."""
    ffmpeg = find_ffmpeg()
    status = _git("status", "--porcelain")
    env: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "ffmpeg_version": ffmpeg_version(ffmpeg),
        "ffmpeg_binary": Path(ffmpeg).name,
        "git_commit": _git("rev-parse", "HEAD"),
        # Whether the checkout differed from that commit, and where the farm's code was imported
        # from: this checkout, or elsewhere (e.g. an export of a commit named on PYTHONPATH).
        "git_dirty": bool(status) if status is not None else None,
        "farm_code_from": _code_origin(),
        "packages": {p: _version(p) for p in ("encodeflow", "bullmq", "redis", "SQLAlchemy", "av", "psutil")},
    }
    if redis_url:
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(redis_url, socket_timeout=2)
            env["redis_server_version"] = client.info("server").get("redis_version")
            client.close()
    return env


def write_result(path: Path, result: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for the summary line)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)


def placeholder_args(args: list[str], names: dict[str, str]) -> list[str]:
    """An FFmpeg command with machine paths replaced: ``names`` maps a path to its placeholder."""
    out = []
    for index, arg in enumerate(args):
        if index == 0:
            out.append("ffmpeg")
            continue
        for path, name in names.items():
            arg = arg.replace(path, name)
        out.append(arg)
    return out
