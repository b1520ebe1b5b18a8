"""Idle node: CPU and memory of a ``farm-node`` with nothing to do. Targets: under 1 % of one core,
under 120 MB resident.

A node is started (``LocalFarm``, one node, embedded Redis, SQLite and folder storage in a temp data
dir) on an empty queue and left to settle; then, over a fixed window, the CPU time of the node and
all its child processes (``psutil`` ``cpu_times``: user + system, and that of reaped children) is
read at both ends and divided by the wall time, and its memory is sampled once a second (RSS; USS,
the memory that would be freed if it exited, every 10 s). For context, not counted against the
node: the CPU of the embedded Redis it talks to, and which Redis commands the node sent in the
window (``INFO commandstats``, read only at both ends; nothing else talks to that Redis then).

    python bench/idle_node.py [--runs 1] [--settle 10] [--window 60] [--out bench/results/idle_node.json]
"""

from __future__ import annotations

import contextlib
import pstats
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis
from common import (
    REPO_ROOT,
    ForeignCpu,
    cpu_seconds,
    describe,
    environment,
    isolated_data_dir,
    load_settings,
    parse_args,
    running_farm,
    shown_path,
    write_result,
)

from farm.base.ports import free_port
from farm.services.embedded import ensure_embedded_redis

NAME = "idle_node"
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 120.0
BUSY_PERCENT = 25.0  # other processes' CPU (% of a core) above which a window is flagged as taken on a busy machine
MB = 2**20


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _memory(procs: list[psutil.Process], uss: bool) -> dict:
    rss, unique, threads = 0, 0, 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if uss:
                info = proc.memory_full_info()
                unique += info.uss
                rss += info.rss
            else:
                rss += proc.memory_info().rss
            threads += proc.num_threads()
    out = {"rss_mb": rss / MB, "threads": threads, "processes": len(procs)}
    if uss:
        out["uss_mb"] = unique / MB
    return out


def _schedstat(pid: int) -> dict[int, tuple[int, int, int]]:
    """Per thread of ``pid``: (ns on a CPU, ns waiting for one, times scheduled) from
    /proc/<pid>/task/*/schedstat; ``{}`` where the kernel has no schedstat."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            run_ns, wait_ns, slices = (int(x) for x in (task / "schedstat").read_text().split()[:3])
            out[int(task.name)] = (run_ns, wait_ns, slices)
    return out


def _sched_delta(before: dict, after: dict, elapsed: float) -> dict | None:
    """Wake-ups (times a thread was put on a CPU) and CPU per wake-up over the window, for the
    threads alive at both ends: the count is what the code decides, the cost per wake-up is what
    the machine makes of it."""
    common = before.keys() & after.keys()
    if not common:
        return None
    run = sum(after[t][0] - before[t][0] for t in common) / 1e9
    wait = sum(after[t][1] - before[t][1] for t in common) / 1e9
    slices = sum(after[t][2] - before[t][2] for t in common)
    return {
        "threads": len(common),
        "cpu_s": round(run, 4),
        "runqueue_wait_s": round(wait, 4),
        "wakeups": slices,
        "wakeups_per_second": round(slices / elapsed, 2),
        "cpu_ms_per_wakeup": round(1000 * run / slices, 3) if slices else None,
    }


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def one_window(node_pid: int, redis_pid: int | None, client: redis.Redis, window: float) -> dict:
    procs = _tree(node_pid)
    redis_proc = psutil.Process(redis_pid) if redis_pid else None
    commands_before = _commandstats(client)
    connections_before = int(client.info("stats")["total_connections_received"])
    foreign = ForeignCpu([redis_pid]).start()
    sched_before = _schedstat(node_pid)
    began = time.monotonic()
    cpu_before = cpu_seconds(procs)
    redis_before = cpu_seconds([redis_proc]) if redis_proc else None
    memory, per_second = [], []
    last_cpu, last_t = cpu_before, began
    tick = 0
    while True:
        tick += 1
        time.sleep(max(0.0, began + tick - time.monotonic()))
        procs = _tree(node_pid)  # children come and go; count whoever is there
        now, cpu = time.monotonic(), cpu_seconds(procs)
        per_second.append(100 * (cpu - last_cpu) / (now - last_t))
        last_cpu, last_t = cpu, now
        memory.append(_memory(procs, uss=tick % 10 == 0))
        if now - began >= window:
            break
    elapsed = time.monotonic() - began
    cpu_after = cpu_seconds(procs)
    sched = _sched_delta(sched_before, _schedstat(node_pid), elapsed)
    other_load = foreign.stop()
    redis_after = cpu_seconds([redis_proc]) if redis_proc else None
    commands_after = _commandstats(client)
    connections_after = int(client.info("stats")["total_connections_received"])
    # Our own two INFO calls are in the counts; take them out.
    sent = {
        name: calls - commands_before.get(name, 0) - (2 if name == "info" else 0)
        for name, calls in commands_after.items()
    }
    sent = {name: n for name, n in sorted(sent.items(), key=lambda kv: -kv[1]) if n > 0}
    uss = [m["uss_mb"] for m in memory if "uss_mb" in m]
    return {
        "window_s": elapsed,
        "cpu_percent_of_one_core": 100 * (cpu_after - cpu_before) / elapsed,
        "cpu_seconds": cpu_after - cpu_before,
        "rss_mb": {"median": statistics.median(m["rss_mb"] for m in memory), "max": max(m["rss_mb"] for m in memory)},
        "uss_mb": {"median": statistics.median(uss), "max": max(uss)} if uss else None,
        "threads": max(m["threads"] for m in memory),
        "processes": max(m["processes"] for m in memory),
        "redis_cpu_percent_of_one_core": (
            100 * (redis_after - redis_before) / elapsed if redis_before is not None else None
        ),
        "redis_commands_in_window": sent,
        "redis_commands_per_second": round(sum(sent.values()) / elapsed, 2),
        "redis_connections_opened_in_window": connections_after - connections_before,
        # The rest of the machine meanwhile (a busy machine makes an idle node's wake-ups dearer).
        "other_processes_cpu_percent": round(100 * other_load["foreign_cpu_s"] / elapsed, 1),
        "other_load": other_load,
        "node_schedstat": sched,
        "per_second_cpu_percent": [round(x, 2) for x in per_second],
        "per_second_memory": [{k: round(v, 2) for k, v in m.items()} for m in memory],
    }


# A farm-node run under cProfile with the main thread's CPU clock (wall time would charge the node
# for the moments a busy machine did not schedule it; the process clock would charge other threads'
# work to whatever the main thread was doing). SIGUSR1 starts the profile, SIGUSR2 writes it, so
# that start-up is left out and the window matches the measured one.
_PROFILED_NODE = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = ["farm-node", *sys.argv[2:]]
profiler = cProfile.Profile(time.thread_time)
def start(*_):
    profiler.enable()
def stop(*_):
    profiler.disable()
    profiler.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
try:
    runpy.run_module("farm_node", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
"""


def _where(filename: str) -> str:
    """A profile entry's file without this machine's paths."""
    if filename.startswith(("<", "{", "~")):
        return filename
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO_ROOT))
    # The project's code imported from elsewhere (an export of a commit on PYTHONPATH): name it
    # from its package, as _TASKS does.
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in ("farm", "farm_node", "app") and "site-packages" not in parts:
            return "/".join(parts[index:])
    for index, part in enumerate(parts):
        if part.startswith("python3"):
            return "stdlib/" + "/".join(parts[index + 1 :])
    return path.name


# Top-level activities of an idle node, by the functions their asyncio tasks start from (a coroutine
# that another awaits through asyncio.wait_for runs in a task of its own, so it is listed too).
_TASKS = {
    "heartbeat: sample (1 Hz) + publish + control read (every 5 s, or on a change)": (
        ("farm_node/heartbeat.py", "_loop"),
        ("farm/services/registry.py", "publish"),
        ("farm/services/registry.py", "desired_state"),
    ),
    "BullMQ worker: blocking pop, lock renewal, stalled check": (
        ("bullmq/worker.py", "retryIfFailed"),
        ("bullmq/worker.py", "run"),
        ("bullmq/lock_manager.py", "_renewal_loop"),
        ("bullmq/timer.py", "_job"),
    ),
    "control and cancel listeners (pub/sub)": (
        ("farm/services/registry.py", "control_listener"),
        ("farm_node/agent.py", "_cancel_listener"),
    ),
}


def _matches(function: str, where: str, name: str) -> bool:
    return function.startswith(where + ":") and function.endswith(f"({name})")


def _by_task(entries: list[dict]) -> dict:
    out = {
        label: round(
            sum(e["cumtime_s"] for e in entries for where, name in funcs if _matches(e["function"], where, name)), 4
        )
        for label, funcs in _TASKS.items()
    }
    loop = [
        e
        for e in entries
        if e["function"].startswith(("stdlib/asyncio/base_events.py", "stdlib/selectors.py"))
        or "select.epoll" in e["function"]
    ]
    out["event loop itself (_run_once, select/epoll)"] = round(sum(e["tottime_s"] for e in loop), 4)
    return out


def profile_window(settings, root: Path, settle: float, window: float, top: int = 25) -> dict:
    """Where an idle node's CPU goes: a second node, under cProfile, over the same kind of window."""
    server = ensure_embedded_redis(settings)
    prof = root / "idle-node.prof"
    log = (root / "profiled-node.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PROFILED_NODE,
            str(prof),
            "--name",
            "bench-profiled",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(settle)
        proc.send_signal(signal.SIGUSR1)
        began = time.process_time(), time.monotonic()
        cpu_before = cpu_seconds([psutil.Process(proc.pid)])
        time.sleep(window)
        cpu_after = cpu_seconds([psutil.Process(proc.pid)])
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not prof.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        elapsed = time.monotonic() - began[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.stop()
    stats = pstats.Stats(str(prof))
    entries = []
    for (filename, line, func), (_calls, ncalls, tottime, cumtime, _) in stats.stats.items():
        entries.append(
            {
                "function": f"{_where(filename)}:{line}({func})",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
            }
        )
    profiled = sum(e["tottime_s"] for e in entries)
    return {
        "window_s": round(elapsed, 1),
        "process_cpu_percent_of_one_core_under_profile": round(100 * (cpu_after - cpu_before) / elapsed, 2),
        "main_thread_profiled_cpu_s": round(profiled, 3),
        "other_threads_cpu_s": round((cpu_after - cpu_before) - profiled, 3),
        "clock": "time.thread_time (CPU time of the main thread, which runs the event loop)",
        "by_task": _by_task(entries),
        "top_by_tottime": sorted(entries, key=lambda e: -e["tottime_s"])[:top],
        "top_by_cumtime": sorted(entries, key=lambda e: -e["cumtime_s"])[: top * 2],
    }


def main() -> int:
    def extra(parser):
        parser.add_argument("--settle", type=float, default=10.0, help="seconds before the window (default 10)")
        parser.add_argument("--window", type=float, default=60.0, help="seconds measured (default 60)")
        parser.add_argument(
            "--profile",
            action="store_true",
            help="then profile another idle node (cProfile, CPU clock) over the same window",
        )

    opts = parse_args(
        NAME, __doc__.splitlines()[0], runs=1, runs_help="idle windows, each on a fresh node", extra=extra
    )
    settle, window = opts.settle, opts.window
    windows = []
    with isolated_data_dir(NAME, keep=opts.keep) as root:
        settings = load_settings()
        for index in range(opts.runs):
            with running_farm(settings, root / f"node-{index + 1}.log") as local:
                env = environment(local.redis.url)
                node_pid = local.node_info()[0]["pid"]
                client = redis.Redis.from_url(local.redis.url, decode_responses=True)
                print(
                    f"node up (run {index + 1}/{opts.runs}); settling {settle:.0f} s, then measuring "
                    f"{window:.0f} s ...",
                    flush=True,
                )
                time.sleep(settle)
                windows.append(one_window(node_pid, local.redis.pid, client, window))
                client.close()
        profile = None
        if opts.profile:
            print(f"profiling another idle node for {window:.0f} s ...", flush=True)
            profile = profile_window(settings, root, settle, window)

    cpu = describe([w["cpu_percent_of_one_core"] for w in windows])
    rss = describe([w["rss_mb"]["max"] for w in windows], digits=1)
    uss = describe([w["uss_mb"]["max"] for w in windows if w["uss_mb"]], digits=1)
    cpu_met, mem_met = cpu["median"] < TARGET_CPU_PERCENT, rss["median"] < TARGET_RSS_MB
    result = {
        "benchmark": NAME,
        "target": {"cpu_percent_of_one_core_max": TARGET_CPU_PERCENT, "rss_mb_max": TARGET_RSS_MB},
        "result": {
            "cpu_percent_of_one_core": cpu["median"],
            "rss_mb_max": rss["median"],
            "uss_mb_max": uss.get("median"),
            "cpu_met": cpu_met,
            # Windows in which other processes used at least BUSY_PERCENT of a core: read them as a lower bound.
            "windows_on_a_busy_machine": sum(w["other_processes_cpu_percent"] >= BUSY_PERCENT for w in windows),
            "memory_met": mem_met,
            "over_runs": {"cpu_percent": cpu, "rss_mb_max": rss, "uss_mb_max": uss},
        },
        "method": {
            "farm": "LocalFarm, 1 node (concurrency 1), embedded Redis, SQLite, folder storage in a temp "
            "data dir; empty queue",
            "settle_s": settle,
            "window_s": window,
            "cpu": "psutil cpu_times (user + system + children_user + children_system) of the node and "
            "its children, at both ends of the window, / wall time; 100 % = one core",
            "memory": "sum over the node and its children of RSS once a second and USS "
            "(memory_full_info) every 10 s; reported: the window's maximum",
            "wakeups": "node_schedstat: /proc/<node>/task/*/schedstat deltas (CPU ns, run-queue wait, times "
            "scheduled) over the threads alive at both ends",
            "other_load": "CPU used meanwhile by processes other than this script, the node and Redis",
            "context": "embedded Redis CPU over the same window and INFO commandstats deltas (not part of "
            "the node's numbers)",
            "runs": opts.runs,
        },
        "environment": env,
        "samples": windows,
        "profile": profile,
    }
    path = write_result(opts.out, result)
    w = windows[-1]
    print(
        f"idle node ({window:.0f} s window after {settle:.0f} s settle, {opts.runs} run(s)): "
        f"CPU {cpu['median']:.2f} % of one core (target < {TARGET_CPU_PERCENT:.0f} %: "
        f"{'met' if cpu_met else 'MISSED'}), RSS max {rss['median']:.1f} MB, USS max {uss.get('median', 0):.1f} MB "
        f"(target < {TARGET_RSS_MB:.0f} MB: {'met' if mem_met else 'MISSED'})"
    )
    print(
        f"  context: Redis CPU {w['redis_cpu_percent_of_one_core']:.2f} %, {w['redis_commands_per_second']} "
        f"commands/s from the node, {w['redis_connections_opened_in_window']} connection(s) opened, "
        f"{w['threads']} threads; other processes used {w['other_processes_cpu_percent']:.0f} % of a core meanwhile"
    )
    busy = [w["other_processes_cpu_percent"] for w in windows if w["other_processes_cpu_percent"] >= BUSY_PERCENT]
    if busy:
        print(
            f"  note: other processes kept the machine busy ({', '.join(f'{b:.0f}' for b in busy)} % of a core) in "
            f"{len(busy)} window(s); on this kind of VM an idle node's wake-ups cost less CPU then, so "
            f"these windows read low against a quiet machine (see docs/benchmarks.md)"
        )
    for i, win in enumerate(windows, 1):
        sch = win["node_schedstat"]
        if sch:
            print(
                f"  run {i}: {win['cpu_percent_of_one_core']:.2f} %, {sch['wakeups_per_second']} wake-ups/s, "
                f"{sch['cpu_ms_per_wakeup']} ms CPU per wake-up, other processes "
                f"{win['other_processes_cpu_percent']:.0f} % of a core"
            )
    print(f"  wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
