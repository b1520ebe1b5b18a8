"""Start-up: from process start to a usable window, without the local farm. Target: under 2 s (median).

Product code is not touched. Each run starts a fresh process, ``python bench/panel_startup.py --role
app``, which runs the real ``app.main.main()`` (what ``python main.py`` runs) and stamps the time
(``time.time``) at each stage:

    process start (the benchmark's clock, right before ``Popen``) -> the script's first line (the
    interpreter is up) -> PySide6 imported -> the app's modules imported (``app.main_window``: pages,
    pyqtgraph, numpy, SQLAlchemy, the farm core) -> ``MainWindow.__init__`` starts (QApplication,
    settings, stylesheet, keyring, services made) -> the window is built -> ``app.exec()`` is entered
    (``window.show()`` done) -> the first iteration of the event loop (a zero ``QTimer``): the window
    is usable -> the window's first Paint event.

The app's modules are imported explicitly before ``main()`` (``main()`` imports the same ones, a
moment later) so that the stages can be told apart; the total is the same work. No local farm:
``ENCODEFLOW_REDIS_URL`` names a running Redis (default ``redis://127.0.0.1:6379/0``, with a queue
name of its own so that no one else's nodes or jobs are read); SQLite and folder storage live in a
temp data dir, and QSettings, keyring and caches in XDG folders under it. One warm-up run per
platform creates the database (its numbers are kept apart as the first start); then ``--runs``
starts per platform, alternating platforms: a real X window under a private Xvfb (started once, as
a desktop's X server is already running) and Qt's offscreen platform.

    python bench/panel_startup.py [--runs 10] [--platforms xvfb,offscreen] [--redis-url URL]
"""

import time

T_SCRIPT = time.time()  # as early as possible: the interpreter is up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

NAME = "panel_startup"
TARGET_S = 2.0
STAGES = ("script", "qt_imported", "app_imported", "window_init", "window_built", "exec", "loop", "first_paint")


# -- the app process: nothing heavier than the app itself is imported here ---------------------


def run_app_child() -> int:
    stamps = {"script": T_SCRIPT}
    import PySide6.QtWidgets  # noqa: F401

    stamps["qt_imported"] = time.time()
    import app.main_window

    stamps["app_imported"] = time.time()
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication

    window_class = app.main_window.MainWindow
    original_init = window_class.__init__

    def timed_init(self, *args, **kwargs):
        stamps["window_init"] = time.time()
        original_init(self, *args, **kwargs)
        stamps["window_built"] = time.time()

    window_class.__init__ = timed_init

    class FirstPaint(QObject):
        def __init__(self, window):
            super().__init__()
            self.window = window

        def eventFilter(self, obj, event) -> bool:
            if (
                event.type() == QEvent.Type.Paint
                and "first_paint" not in stamps
                and hasattr(obj, "window")
                and obj.window() is self.window
            ):
                stamps["first_paint"] = time.time()
            return False

    original_exec = QApplication.exec
    state = {}

    def exec_with_stamps(self, *args):
        stamps["exec"] = time.time()
        window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, window_class))
        state["filter"] = FirstPaint(window)
        self.installEventFilter(state["filter"])

        def first_iteration():
            stamps["loop"] = time.time()
            stamps["cpu_s_at_loop"] = time.process_time()  # all threads: what the start cost, whatever the box's load
            waited = time.monotonic()

            def finish():
                if "first_paint" not in stamps and time.monotonic() - waited < 3:
                    QTimer.singleShot(10, finish)
                    return
                self.removeEventFilter(state["filter"])
                print(
                    "STAMPS "
                    + json.dumps(
                        {**stamps, "platform": self.platformName(), "window_size": [window.width(), window.height()]}
                    ),
                    flush=True,
                )
                window.quit()

            finish()

        QTimer.singleShot(0, first_iteration)
        return original_exec(*args)

    QApplication.exec = exec_with_stamps
    from app.main import main

    return main([sys.argv[0]])


# -- the benchmark -----------------------------------------------------------------------------


def run_once(env: dict, log_path) -> dict:
    import subprocess

    with open(log_path, "a") as log:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", "app"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"the app did not start within 90 s; see {log_path}") from None
    exited = time.time()
    line = next((text for text in out.splitlines() if text.startswith("STAMPS ")), None)
    if line is None:
        raise RuntimeError(f"the app exited ({proc.returncode}) without reaching its event loop; see {log_path}")
    stamps = json.loads(line.split(" ", 1)[1])
    at = {stage: round(stamps[stage] - t0, 4) for stage in STAGES if stage in stamps}
    stage_s, previous = {}, 0.0
    for stage in STAGES:
        if stage in at:
            stage_s[stage] = round(at[stage] - previous, 4)
            previous = at[stage]
    return {
        "usable_s": at["loop"],
        "first_paint_s": at.get("first_paint"),
        "cpu_s_to_usable": round(stamps["cpu_s_at_loop"], 3),
        "at_s": at,
        "stage_s": stage_s,
        "platform": stamps["platform"],
        "window_size": stamps["window_size"],
        "exit_code": proc.returncode,
        "quit_and_exit_s": round(exited - stamps["loop"], 3),
    }


def import_costs(env: dict, top: int = 12) -> dict:
    """``python -X importtime``: what importing PySide6.QtWidgets and app.main_window costs, by top-level
    package (self time summed over its modules), one extra run."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import PySide6.QtWidgets, app.main_window"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    by_package: dict[str, int] = {}
    total = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(self_us)
        total += int(self_us)
    ranked = sorted(by_package.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {
        "total_ms": round(total / 1000, 1),
        "self_ms_by_top_level_package": {name: round(us / 1000, 1) for name, us in ranked},
    }


def main() -> int:
    import contextlib
    import shutil
    import uuid

    import redis
    from common import describe, environment, isolated_data_dir, parse_args, shown_path, write_result
    from panel_common import child_env, xvfb_display

    def extra(parser):
        parser.add_argument(
            "--platforms",
            default="xvfb,offscreen" if shutil.which("Xvfb") else "offscreen",
            help="comma-separated: xvfb (a real X window under a private Xvfb), offscreen "
            "(default: both where Xvfb is installed)",
        )
        parser.add_argument(
            "--redis-url",
            default="redis://127.0.0.1:6379/0",
            help="a running Redis for ENCODEFLOW_REDIS_URL (default redis://127.0.0.1:6379/0)",
        )

    opts = parse_args(NAME, __doc__.splitlines()[0], runs=10, runs_help="starts per platform", extra=extra)
    platforms = [p.strip() for p in opts.platforms.split(",") if p.strip()]
    try:
        redis.Redis.from_url(opts.redis_url, socket_timeout=3).ping()
    except redis.RedisError as exc:
        print(f"no Redis at {opts.redis_url} ({exc}); pass --redis-url", file=sys.stderr)
        return 2
    queue = f"bench-startup-{uuid.uuid4().hex[:8]}"
    with isolated_data_dir(NAME, keep=opts.keep) as root, contextlib.ExitStack() as stack:
        displays = {"offscreen": {"QT_QPA_PLATFORM": "offscreen"}}
        if "xvfb" in platforms:
            name, _pid = stack.enter_context(xvfb_display())
            displays["xvfb"] = {"DISPLAY": name, "QT_QPA_PLATFORM": "xcb"}
        base = {"ENCODEFLOW_REDIS_URL": opts.redis_url, "ENCODEFLOW_QUEUE": queue}
        envs = {p: child_env({**base, **displays[p]}, root) for p in platforms}
        env = environment(opts.redis_url)
        log = root / "app.log"
        print(f"start-up: 1 warm-up + {opts.runs} runs on {', '.join(platforms)} ...", flush=True)
        first = {p: run_once(envs[p], log) for p in platforms}  # the first creates the database
        imports = import_costs(envs[platforms[0]])
        runs = {p: [] for p in platforms}
        loads = []
        for _run in range(opts.runs):
            for platform in platforms:
                loads.append(os.getloadavg()[0])
                runs[platform].append(run_once(envs[platform], log))

    summary = {}
    for platform, items in runs.items():
        summary[platform] = {
            "usable_s": describe([r["usable_s"] for r in items], 3),
            "first_paint_s": describe([r["first_paint_s"] for r in items if r["first_paint_s"] is not None], 3),
            "cpu_s_to_usable": describe([r["cpu_s_to_usable"] for r in items], 3),
            "median_stage_s": {
                stage: describe([r["stage_s"][stage] for r in items if stage in r["stage_s"]], 3)["median"]
                for stage in STAGES
            },
        }
    headline = max(summary[p]["usable_s"]["median"] for p in platforms)
    result = {
        "benchmark": NAME,
        "target": {"usable_window_median_s_max": TARGET_S},
        "result": {
            "usable_median_s_by_platform": {p: summary[p]["usable_s"]["median"] for p in platforms},
            "first_paint_median_s_by_platform": {p: summary[p]["first_paint_s"].get("median") for p in platforms},
            "met": headline < TARGET_S,
            "summary": summary,
            "import_time_once": imports,
            "first_start_after_install_s": {
                p: {"usable_s": first[p]["usable_s"], "stage_s": first[p]["stage_s"]} for p in platforms
            },
        },
        "method": {
            "process": "python bench/panel_startup.py --role app: imports PySide6 and app.main_window (stamping "
            "each), wraps MainWindow.__init__ and QApplication.exec to stamp, then runs app.main.main()",
            "clock": "time.time() in the benchmark right before Popen, and in the app at each stage",
            "usable": "the first event-loop iteration after window.show(): a zero QTimer started as exec() begins",
            "first_paint": "the first QEvent.Paint for a widget of the main window (application event filter)",
            "cpu_s_to_usable": "time.process_time() of the app process (all its threads) at the first loop iteration: "
            "the CPU the start needs, which the load of a shared machine does not change much",
            "services": f"ENCODEFLOW_REDIS_URL = a running Redis (queue {queue.rsplit('-', 1)[0]}-<random>), "
            "SQLite and folder storage in a temp data dir; no local farm",
            "runs_per_platform": opts.runs,
            "order": "a warm-up per platform (the first creates the database), then platforms alternating",
            "load_average_1min_at_each_start": [round(x, 2) for x in loads],
            "percentiles": "linear interpolation between nearest ranks",
        },
        "environment": env,
        "first_runs": first,
        "runs": runs,
    }
    path = write_result(opts.out, result)
    for platform in platforms:
        s = summary[platform]
        print(
            f"start-up on {platform}: usable window median {s['usable_s']['median']:.2f} s "
            f"(min {s['usable_s']['min']:.2f}, max {s['usable_s']['max']:.2f}), first paint "
            f"{s['first_paint_s'].get('median', float('nan')):.2f} s, "
            f"CPU to usable {s['cpu_s_to_usable']['median']:.2f} s; "
            "stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in s["median_stage_s"].items() if v == v)
        )
    print(f"  target: median < {TARGET_S:.0f} s: {'met' if headline < TARGET_S else 'MISSED'}")
    print(f"  wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role" and sys.argv[2] == "app":
        raise SystemExit(run_app_child())
    raise SystemExit(main())
