"""Idle node, side by side: several ``farm-node`` processes with different idle timings, measured
over the same windows, so that they see the same machine. Answers two questions that a single
idle measurement on a shared machine cannot: does a change of the node's idle timing change its
CPU (compare variants within a window), and how much does the rest of the machine change it
(compare windows).

Each variant is a ``farm-node`` started from this script with a few of the node's module-level
settings replaced in that process only (product code is not changed):

- ``drain``: BullMQ ``drainDelay``, the length of the idle blocking pop (``farm_node.agent.DRAIN_DELAY_S``)
- ``socket_timeout``: the read timeout of the worker's own Redis connection (the one whose idle wait
  blocks), which must exceed ``drain``
- ``publish_every``: heartbeats between two publishes (``Heartbeat(publish_every=...)``)

``/metrics`` is served from the node's event loop and reads the queue only when scraped, so neither
wakes an idle node and neither is a setting here.

Per window and variant: CPU (% of one core, from schedstat's nanoseconds), wake-ups (times its threads were put on a
CPU, ``/proc/<pid>/task/*/schedstat``) per second, CPU per wake-up; per window, the CPU that other
processes on the machine used meanwhile.

    python bench/idle_variants.py [--runs 15] [--window 20] [--variants JSON] [--out bench/results/idle_variants.json]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import psutil
from common import (
    ForeignCpu,
    cpu_seconds,
    environment,
    isolated_data_dir,
    load_settings,
    parse_args,
    shown_path,
    write_result,
)
from idle_node import _sched_delta, _schedstat

from farm.base.ports import free_port
from farm.services.embedded import ensure_embedded_redis

NAME = "idle_variants"
VARIANTS = {
    "current": {},
    "first_run": {"drain": 5, "publish_every": 1},  # BullMQ's default drainDelay, a publish every sample
    "publish_every_2": {"publish_every": 2},  # a publish every 2 samples (the node's default is 5)
    "fewer_wakeups": {"drain": 10, "socket_timeout": 15},
}

_NODE = """
import json, runpy, sys
cfg = json.loads(sys.argv[1])
sys.argv = ["farm-node", *sys.argv[2:]]
import farm_node.agent as agent
import farm_node.heartbeat as heartbeat
if "drain" in cfg:
    agent.DRAIN_DELAY_S = cfg["drain"]
if "publish_every" in cfg:
    class Heartbeat(heartbeat.Heartbeat):
        def __init__(self, *a, **k):
            k["publish_every"] = cfg["publish_every"]
            super().__init__(*a, **k)
    agent.Heartbeat = Heartbeat
if "socket_timeout" in cfg:
    open_client = agent.redis_client
    def redis_client(url, **k):
        if "read_timeout" in k:  # the worker's own connection, the one that blocks while idle
            k["read_timeout"] = cfg["socket_timeout"]
        return open_client(url, **k)
    agent.redis_client = redis_client
runpy.run_module("farm_node", run_name="__main__", alter_sys=True)
"""


def _start_variant(root, name: str, cfg: dict) -> subprocess.Popen:
    """One ``farm-node`` with the variant's settings, its output in ``<root>/<name>.log``."""
    log = (root / f"{name}.log").open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _NODE,
            json.dumps(cfg),
            "--name",
            f"variant-{name.replace('_', '-')}",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _measure_window(nodes: dict[str, psutil.Process], server, window: float) -> dict:
    """CPU and wake-ups of every variant over one window, and what the rest of the machine used."""
    cpu0 = {n: cpu_seconds([p]) for n, p in nodes.items()}
    sched0 = {n: _schedstat(p.pid) for n, p in nodes.items()}
    other = ForeignCpu([server.pid]).start()
    began = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - began
    row = {
        "at": time.strftime("%H:%M:%S", time.gmtime()),
        "window_s": round(elapsed, 2),
        "other_load": other.stop(),
        "variants": {},
    }
    row["other_processes_cpu_percent"] = round(100 * row["other_load"]["foreign_cpu_s"] / elapsed, 1)
    for n, p in nodes.items():
        sched = _sched_delta(sched0[n], _schedstat(p.pid), elapsed)
        ticks = 100 * (cpu_seconds([p]) - cpu0[n]) / elapsed  # 10 ms resolution
        row["variants"][n] = {
            "cpu_percent": round(100 * sched["cpu_s"] / elapsed, 3) if sched else ticks,
            "cpu_percent_psutil": round(ticks, 3),
            "sched": sched,
        }
    return row


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    def extra(parser):
        parser.add_argument("--settle", type=float, default=10.0, help="seconds before the first window (default 10)")
        parser.add_argument("--window", type=float, default=20.0, help="seconds per window (default 20)")
        parser.add_argument(
            "--variants",
            type=json.loads,
            default=VARIANTS,
            help="JSON object: variant name -> settings (default: current, first_run, fewer_wakeups)",
        )

    opts = parse_args(NAME, __doc__.splitlines()[0], runs=15, runs_help="windows", extra=extra)
    windows = []
    with isolated_data_dir(NAME, keep=opts.keep) as root:
        settings = load_settings()
        server = ensure_embedded_redis(settings)
        env = environment(server.url)
        procs: dict[str, subprocess.Popen] = {}
        try:
            for name, cfg in opts.variants.items():
                procs[name] = _start_variant(root, name, cfg)
            print(
                f"{len(procs)} idle nodes; settling {opts.settle:.0f} s, then {opts.runs} windows of "
                f"{opts.window:.0f} s ...",
                flush=True,
            )
            time.sleep(opts.settle)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"variant {name} exited: {(root / f'{name}.log').read_text()[-2000:]}")
            nodes = {name: psutil.Process(proc.pid) for name, proc in procs.items()}
            for index in range(opts.runs):
                row = _measure_window(nodes, server, opts.window)
                windows.append(row)
                print(
                    f"  window {index + 1}/{opts.runs}: other processes {row['other_processes_cpu_percent']:.0f} % "
                    f"of a core; " + ", ".join(f"{n} {v['cpu_percent']:.2f} %" for n, v in row["variants"].items()),
                    flush=True,
                )
            errors = {n: (root / f"{n}.log").read_text().count("queue error") for n in procs}
        finally:
            _stop_all(procs)
            server.stop()

    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    summary = {}
    for n in opts.variants:
        rows = [w["variants"][n] for w in windows]
        summary[n] = {
            "settings": opts.variants[n],
            "cpu_percent_median": med(r["cpu_percent"] for r in rows),
            "cpu_percent_max": max(r["cpu_percent"] for r in rows),
            "wakeups_per_second_median": med(r["sched"]["wakeups_per_second"] for r in rows if r["sched"]),
            "cpu_ms_per_wakeup_median": med(r["sched"]["cpu_ms_per_wakeup"] for r in rows if r["sched"]),
            "queue_errors_in_log": errors[n],
        }
    result = {
        "benchmark": NAME,
        "result": {
            "by_variant": summary,
            "other_processes_cpu_percent": {
                "min": min(w["other_processes_cpu_percent"] for w in windows),
                "median": med(w["other_processes_cpu_percent"] for w in windows),
                "max": max(w["other_processes_cpu_percent"] for w in windows),
            },
        },
        "method": {
            "farm": "embedded Redis, SQLite, folder storage in a temp data dir; one farm-node process per variant, "
            "all idle on the same empty queue at the same time",
            "variants": "module-level settings replaced in the variant's own process before farm_node runs "
            "(see the script's docstring); no product file is changed",
            "cpu": "schedstat CPU ns of each node's threads over each window / wall time (psutil's cpu_times, "
            "10 ms resolution, kept as cpu_percent_psutil)",
            "wakeups": "/proc/<pid>/task/*/schedstat: times scheduled on a CPU, summed over the threads alive at "
            "both ends of the window",
            "other_load": "CPU the machine spent outside this script, its nodes and its Redis during the window",
            "settle_s": opts.settle,
            "window_s": opts.window,
            "windows": opts.runs,
        },
        "environment": env,
        "samples": windows,
    }
    path = write_result(opts.out, result)
    print(
        f"idle variants ({opts.runs} windows of {opts.window:.0f} s; other processes used "
        f"{result['result']['other_processes_cpu_percent']['min']:.0f}-"
        f"{result['result']['other_processes_cpu_percent']['max']:.0f} % of a core):"
    )
    for n, s in summary.items():
        print(
            f"  {n}: CPU median {s['cpu_percent_median']:.2f} % (max {s['cpu_percent_max']:.2f} %), "
            f"{s['wakeups_per_second_median']} wake-ups/s, {s['cpu_ms_per_wakeup_median']} ms per wake-up"
        )
    print(f"  wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
