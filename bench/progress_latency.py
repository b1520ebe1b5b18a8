"""Progress latency: from the FFmpeg progress line to the Jobs table's row repainted. Target: p50 < 300 ms.

Product code is not touched. A farm of its own (``LocalFarm``: embedded Redis, SQLite, folder
storage, one ``farm-node`` process) and the real app in this process: ``app.main.main()`` as
``python main.py`` runs it (``ENCODEFLOW_REDIS_URL`` set to the farm's Redis), in a real X window
under a private Xvfb (``--platform offscreen``: Qt's offscreen platform), on the Jobs page.

The node's FFmpeg (``ENCODEFLOW_FFMPEG``) is a bash wrapper that runs the real FFmpeg with its
``-progress pipe:1`` output going through a read loop: each line is stamped (``$EPOCHREALTIME``,
microseconds) the moment it is read, then forwarded to the node unchanged. Jobs are submitted one at
a time (``Farm.submit``, from a thread of the benchmark) and each waits for the previous to complete.

The chain of one progress value, on one clock (``time.time``, the wrapper and Redis share it):

    FFmpeg line (wrapper stamp) --node: parse, 2/s throttle, Job.updateProgress--> XADD on
    bull:<queue>:events (its stream id: Redis's ms clock) --app: JobEventThread's XREAD, queued
    signal, JobPages.on_job_event, JobsModel.set_progress--> dataChanged of the progress cell
    --view: update, the next paint--> the cell painted with that value

``dataChanged`` is recorded by a slot connected to the model (value read from the model in it), the
paint by the table's progress delegate replaced with a subclass of the app's own ``ProgressDelegate``
that stamps after painting (job id, value, time), and the viewport's Paint events by an event filter.

Matching rule. The node publishes ``round(percent, 1)`` of its ``ProgressParser`` at the end of an
FFmpeg progress block (the ``progress=continue|end`` line), at most twice a second: not every block is
published. Replaying the wrapper's lines through the same ``ProgressParser`` (same duration) gives
each block's value and the time of its ``progress=`` line. A published value ``v`` (stream id time
``T``) comes from the last block whose value rounds to ``v`` and whose line was read at or before
``T`` (1 ms of slack for the stream id's resolution): the line that produced the number. Its
``dataChanged`` is the first one for that job and value at or after ``T``; its repaint the first
delegate paint of that job's cell with that value at or after the ``dataChanged``. Values published
before the job's row was in the table (no ``dataChanged``) are counted and left out.

    python bench/progress_latency.py [--runs 6] [--platform xvfb|offscreen] [--out bench/results/progress_latency.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import redis
from common import (
    describe,
    environment,
    isolated_data_dir,
    load_settings,
    make_clip,
    parse_args,
    running_farm,
    shown_path,
    write_result,
)
from panel_common import CpuWindow, default_platform, hook_exec, xvfb_display

from farm.domain.jobspec import OutputConfig
from farm.domain.keyspace import Keyspace
from farm.domain.media import find_ffmpeg, probe
from farm_node.progress import ProgressParser

NAME = "progress_latency"
TARGET_P50_MS = 300.0
CLIP = {"seconds": 30, "width": 1920, "height": 1080}
CONFIG = OutputConfig(resolution="720p", format="mp4", include_audio=True)
GAP_S = 1.0  # between one job's completion and the next submit


# -- the FFmpeg wrapper ------------------------------------------------------------------------


def write_wrapper(path: Path, real_ffmpeg: str, stamps: Path) -> None:
    """A bash wrapper: with ``-progress`` in the arguments, stamp and forward each stdout line; else exec."""
    bash = shutil.which("bash")
    probe_bash = os.popen(f"{bash} -c 'echo $EPOCHREALTIME'").read().strip()
    if not probe_bash.replace(".", "", 1).replace(",", "", 1).isdigit():
        raise RuntimeError("this benchmark needs bash 5 ($EPOCHREALTIME)")
    stamps.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!{bash}
# EncodeFlow benchmark: stamp (epoch us) each progress line FFmpeg writes, then forward it unchanged.
case " $* " in
  *" -progress "*)
    out='{stamps}'/$$.txt
    printf 'ARGS %s\\n' "${{@: -1}}" > "$out"
    exec 3>>"$out"
    '{real_ffmpeg}' "$@" | while IFS= read -r line; do
      t=${{EPOCHREALTIME//[.,]/}}
      printf '%s\\n' "$line"
      printf '%s %s\\n' "$t" "$line" >&3
    done
    exit "${{PIPESTATUS[0]}}"
    ;;
esac
exec '{real_ffmpeg}' "$@"
""")
    path.chmod(0o755)


def calibrate_wrapper(root: Path, reps: int = 40) -> list[float]:
    """ms from the wrapper's stamp of a line to a reader like the node's (asyncio pipe) having it: what
    the stamping loop adds. The "FFmpeg" here is a bash loop that prints a progress line every 20 ms."""
    fake = root / "fake-ffmpeg"
    fake.write_text(f"#!{shutil.which('bash')}\nfor i in $(seq {reps}); do echo progress=continue; sleep 0.02; done\n")
    fake.chmod(0o755)
    stamps = root / "calibration-stamps"
    wrapper = root / "calibration-wrapper"
    write_wrapper(wrapper, str(fake), stamps)

    async def run() -> list[float]:
        proc = await asyncio.create_subprocess_exec(
            str(wrapper), "-progress", "pipe:1", "x", stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        got = []
        while await proc.stdout.readline():
            got.append(time.time())
        await proc.wait()
        return got

    received = asyncio.run(run())
    [stamp_file] = list(stamps.glob("*.txt"))
    stamped = [int(line.split(" ", 1)[0]) / 1e6 for line in stamp_file.read_text().splitlines()[1:]]
    return [(r - s) * 1000 for r, s in zip(received, stamped, strict=True)]  # one stamp per forwarded line


def read_blocks(stamp_file: Path, duration: float) -> tuple[str, list[tuple[float, float]]]:
    """(last argument, [(epoch s of the block's ``progress=`` line, rounded value it gives)])."""
    lines = stamp_file.read_text().splitlines()
    last_arg = lines[0].split(" ", 1)[1] if lines and lines[0].startswith("ARGS ") else ""
    parser = ProgressParser(duration)
    blocks = []
    for line in lines[1:]:
        stamp, _, text = line.partition(" ")
        percent = parser.feed(text)
        if percent is not None:
            blocks.append((int(stamp) / 1e6, round(percent, 1)))
    return last_arg, blocks


# -- the app side ------------------------------------------------------------------------------


class Recorder:
    """Hooks on the Jobs page: dataChanged of the progress column, delegate paints, viewport Paint events."""

    def __init__(self, page):
        from PySide6.QtCore import QEvent, QObject

        from app.models.jobs_model import BAR_ENABLED_ROLE, COL_PROGRESS, JOB_ROLE, PROGRESS_ROLE
        from app.widgets.progress_delegate import ProgressDelegate

        self.changes: list[tuple[float, str, float | None, str]] = []  # (t, job id, value, "cell"|"row")
        self.paints: list[tuple[float, str, float | None]] = []  # (t after painting, job id, value)
        self.paint_events: list[float] = []
        model, table = page.model, page.table
        recorder = self

        def changed(top_left, bottom_right, _roles=()) -> None:
            if not top_left.column() <= COL_PROGRESS <= bottom_right.column():
                return
            now = time.time()
            kind = "cell" if top_left.column() == bottom_right.column() == COL_PROGRESS else "row"
            for row in range(top_left.row(), bottom_right.row() + 1):
                value = model.data(model.index(row, COL_PROGRESS), PROGRESS_ROLE)
                recorder.changes.append((now, model.job(row)["id"], value, kind))

        model.dataChanged.connect(changed)

        class TimedProgressDelegate(ProgressDelegate):
            def paint(self, painter, option, index) -> None:
                super().paint(painter, option, index)
                job = index.data(JOB_ROLE)
                recorder.paints.append((time.time(), job["id"] if job else "", index.data(PROGRESS_ROLE)))

        class PaintFilter(QObject):
            def eventFilter(self, obj, event) -> bool:
                if event.type() == QEvent.Type.Paint:
                    recorder.paint_events.append(time.time())
                return False

        self.delegate = TimedProgressDelegate(PROGRESS_ROLE, table, enabled_role=BAR_ENABLED_ROLE)
        table.setItemDelegateForColumn(COL_PROGRESS, self.delegate)
        self.filter = PaintFilter(table)
        table.viewport().installEventFilter(self.filter)


def drive(
    settings,
    clip: Path,
    runs: int,
    redis_url: str,
    queue: str,
    done: threading.Event,
    submitted: list[dict],
    errors: list[str],
) -> None:
    """The user's side, on a thread of its own: submit one job at a time, wait for it to complete."""
    from farm.client import Farm

    farm = Farm(settings, start_embedded=False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stream = Keyspace(queue).events
    try:
        time.sleep(2.0)  # the window's first page and the listeners are up
        for _ in range(runs):
            newest = client.xrevrange(stream, count=1)
            last_id = newest[0][0] if newest else "0-0"
            began = time.time()
            [job] = [j.to_json() for j in farm.submit([clip], CONFIG, submitted_by="bench")]
            outcome = None
            deadline = time.monotonic() + 300
            while outcome is None and time.monotonic() < deadline:
                for _key, entries in client.xread({stream: last_id}, block=1000) or []:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        if fields.get("jobId") == job["id"] and fields.get("event") in ("completed", "failed"):
                            outcome = fields["event"]
            submitted.append(
                {"job_id": job["id"], "submitted_at": began, "outcome": outcome, "finished_at": time.time()}
            )
            if outcome != "completed":
                errors.append(f"job {job['id']} {outcome or 'timed out'}")
                break
            time.sleep(GAP_S)
        time.sleep(1.0)  # the last paints
    except Exception as exc:  # reported by the benchmark, which then fails
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
        farm.close()
        done.set()


def run_app_with_driver(settings, clip: Path, runs: int, redis_url: str, log_path: Path) -> dict:
    """``app.main.main()`` on the Jobs page, with the recorder and the driver thread attached."""
    from PySide6.QtCore import QTimer

    box: dict = {"submitted": [], "errors": []}
    done = threading.Event()

    def on_loop(app, window) -> None:
        window.show_page("jobs")
        box["recorder"] = Recorder(window.pages["jobs"])
        box["platform"] = app.platformName()
        box["window_size"] = [window.width(), window.height()]
        threading.Thread(
            target=drive,
            args=(settings, clip, runs, redis_url, settings.queue, done, box["submitted"], box["errors"]),
            daemon=True,
        ).start()
        poll = QTimer(window, interval=200)
        poll.timeout.connect(lambda: window.quit() if done.is_set() else None)
        poll.start()

    hook_exec(on_loop)
    import logging

    # main() configures logging only where nothing did yet: its INFO lines go to a file, not the summary.
    logging.basicConfig(
        level=logging.INFO, filename=str(log_path), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from app.main import main

    box["exit_code"] = main([sys.argv[0]])
    return box


# -- matching ------------------------------------------------------------------------------------


def _blocks_by_job(stamps: Path, duration: float, submitted: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Each job's FFmpeg progress blocks, from the wrapper's stamp file whose last argument names it."""
    blocks_by_job = {}
    for stamp_file in stamps.glob("*.txt"):
        last_arg, blocks = read_blocks(stamp_file, duration)
        for job in submitted:
            if job["job_id"] in last_arg:
                blocks_by_job[job["job_id"]] = blocks
    return blocks_by_job


def _published_progress(entries: list, job_id: str) -> list[tuple[float, float, str]]:
    """(stream id time in s, value, stream id) of each progress event the node published for the job."""
    published = []
    for entry_id, fields in entries:
        if fields.get("jobId") == job_id and fields.get("event") == "progress":
            try:
                value = round(float(json.loads(fields["data"])), 1)
            except (TypeError, ValueError):
                continue
            published.append((int(entry_id.split("-")[0]) / 1000, value, entry_id))
    return published


def _first_data_changed(rec: Recorder, job_id: str, value: float, t_xadd: float) -> float | None:
    return next(
        (
            t
            for t, jid, v, _kind in rec.changes
            if jid == job_id and v is not None and round(v, 1) == value and t >= t_xadd - 0.001
        ),
        None,
    )


def _first_paint(rec: Recorder, job_id: str, value: float, change: float) -> float | None:
    return next(
        (t for t, jid, v in rec.paints if jid == job_id and v is not None and round(v, 1) == value and t >= change),
        None,
    )


def analyse(box: dict, stamps: Path, duration: float, redis_url: str, queue: str) -> tuple[list[dict], dict]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(Keyspace(queue).events)
    client.close()
    rec: Recorder = box["recorder"]
    blocks_by_job = _blocks_by_job(stamps, duration, box["submitted"])
    samples, unmatched = [], {"no_ffmpeg_line": 0, "no_data_changed": 0, "no_paint": 0, "published": 0}
    for job in box["submitted"]:
        job_id = job["job_id"]
        blocks = blocks_by_job.get(job_id, [])
        seen_values = set()
        for t_xadd, value, entry_id in _published_progress(entries, job_id):
            unmatched["published"] += 1
            if value in seen_values:  # the same value again (the final 100 after the upload): not a new bar
                continue
            line = [t for t, v in blocks if v == value and t <= t_xadd + 0.001]
            if not line:
                unmatched["no_ffmpeg_line"] += 1
                continue
            t_line = line[-1]
            change = _first_data_changed(rec, job_id, value, t_xadd)
            if change is None:
                unmatched["no_data_changed"] += 1
                continue
            seen_values.add(value)
            paint = _first_paint(rec, job_id, value, change)
            paint_event = next((t for t in rec.paint_events if t >= change), None)
            if paint is None:
                unmatched["no_paint"] += 1
                continue
            samples.append(
                {
                    "job_id": job_id,
                    "value": value,
                    "stream_id": entry_id,
                    "line_to_painted_ms": (paint - t_line) * 1000,
                    "line_to_xadd_ms": (t_xadd - t_line) * 1000,
                    "xadd_to_data_changed_ms": (change - t_xadd) * 1000,
                    "data_changed_to_painted_ms": (paint - change) * 1000,
                    "data_changed_to_paint_event_ms": (paint_event - change) * 1000 if paint_event else None,
                    "raw": {
                        "line_epoch_s": t_line,
                        "xadd_epoch_ms": int(entry_id.split("-")[0]),
                        "data_changed_epoch_s": change,
                        "painted_epoch_s": paint,
                    },
                }
            )
    blocks_total = sum(len(b) for b in blocks_by_job.values())
    unmatched["ffmpeg_progress_blocks"] = blocks_total
    return samples, unmatched


def main() -> int:
    def extra(parser):
        parser.add_argument(
            "--platform",
            choices=("xvfb", "offscreen"),
            default=default_platform(),
            help="a real X window under a private Xvfb (default when installed), or Qt's offscreen platform",
        )

    opts = parse_args(NAME, __doc__.splitlines()[0], runs=6, runs_help="jobs, one at a time", extra=extra)
    with isolated_data_dir(NAME, keep=opts.keep) as root:
        clip = root / "clips" / "camera.mp4"
        clip_info = make_clip(clip, **CLIP)
        duration = probe(clip).duration
        stamps = root / "stamps"
        wrapper = root / "ffmpeg-wrapper"
        write_wrapper(wrapper, find_ffmpeg(), stamps)
        calibration = calibrate_wrapper(root)
        settings = load_settings(ffmpeg=str(wrapper))
        with (
            running_farm(settings, root / "node.log") as local,
            xvfb_display() if opts.platform == "xvfb" else _no_display() as disp,
        ):
            env = environment(local.redis.url)
            saved = dict(os.environ)
            os.environ["ENCODEFLOW_REDIS_URL"] = local.redis.url  # as a user with a farm configured: no local farm
            for name in ("config", "cache", "data", "state"):
                (root / f"xdg-{name}").mkdir(exist_ok=True)
                os.environ[f"XDG_{name.upper()}_HOME"] = str(root / f"xdg-{name}")
            if disp is not None:
                os.environ.update({"DISPLAY": disp[0], "QT_QPA_PLATFORM": "xcb"})
            else:
                os.environ["QT_QPA_PLATFORM"] = "offscreen"
            app_settings = load_settings()
            node_pid = local.node_info()[0]["pid"]
            cpu = CpuWindow(
                {"node": node_pid, "redis": local.redis.pid, "xvfb": disp[1] if disp else None}, own_children=("node",)
            ).start()
            print(
                f"{opts.runs} jobs ({CLIP['seconds']} s {CLIP['width']}x{CLIP['height']} -> {CONFIG.resolution} "
                f"{CONFIG.format}), one at a time, app on {opts.platform} ...",
                flush=True,
            )
            try:
                box = run_app_with_driver(app_settings, clip, opts.runs, local.redis.url, root / "app.log")
            finally:
                os.environ.clear()
                os.environ.update(saved)
            machine = cpu.stop()
            if box["errors"]:
                raise RuntimeError("; ".join(box["errors"]))
            samples, counts = analyse(box, stamps, duration, local.redis.url, settings.queue)

    keys = [
        "line_to_painted_ms",
        "line_to_xadd_ms",
        "xadd_to_data_changed_ms",
        "data_changed_to_painted_ms",
        "data_changed_to_paint_event_ms",
    ]
    stats = {k: describe([s[k] for s in samples if s[k] is not None], 2) for k in keys}
    total = stats["line_to_painted_ms"]
    p50 = total["median"]
    per_job = {
        job["job_id"]: describe([s["line_to_painted_ms"] for s in samples if s["job_id"] == job["job_id"]], 1)
        for job in box["submitted"]
    }
    result = {
        "benchmark": NAME,
        "target": {"line_to_painted_p50_ms_max": TARGET_P50_MS},
        "result": {
            "line_to_painted_p50_ms": p50,
            "line_to_painted_p90_ms": total["p90"],
            "line_to_painted_p99_ms": total["p99"],
            "met": p50 < TARGET_P50_MS,
            "stats_ms": stats,
            "per_job": per_job,
            "counts": counts,
            "wrapper_stamp_to_reader_ms": describe(calibration, 3),
        },
        "method": {
            "clip": clip_info,
            "output_config": CONFIG.to_payload(),
            "jobs": opts.runs,
            "farm": "LocalFarm, 1 node (concurrency 1), embedded Redis, SQLite, folder storage in a temp data dir",
            "app": f"app.main.main() in the benchmark's process, Jobs page, platform {box['platform']}, "
            f"window {box['window_size']}; ENCODEFLOW_REDIS_URL = the farm's Redis",
            "ffmpeg_clock": "bash wrapper (ENCODEFLOW_FFMPEG): FFmpeg's stdout through a read loop that stamps "
            "$EPOCHREALTIME per line, then forwards it",
            "publish_clock": "the progress event's stream id (Redis server time, ms)",
            "app_clocks": "time.time() in a slot on JobsModel.dataChanged (progress column) and after the app's "
            "ProgressDelegate.paint (a subclass installed on the column); viewport Paint events by an "
            "event filter",
            "matching": "published value v at stream time T <- the last FFmpeg block (progress= line) whose "
            "ProgressParser value rounds to v, read at or before T (+1 ms); -> the first dataChanged of "
            "that job with v at or after T; -> the first paint of that job's cell with v at or after it. "
            "A value published again (the final 100 after the upload) is not counted twice",
            "throttle": "the node publishes at most 2 values a second (PROGRESS_INTERVAL_S = 0.5), FFmpeg writes a "
            "block every 0.5 s: blocks that were not published have no sample",
            "wrapper_calibration": "a fake FFmpeg printing a line every 20 ms through the same wrapper, read with "
            "asyncio as the node reads: ms from stamp to the reader having the line",
            "percentiles": "linear interpolation between nearest ranks",
        },
        "environment": env,
        "cpu_over_run": machine,
        "jobs": box["submitted"],
        "samples": samples,
    }
    path = write_result(opts.out, result)
    print(
        f"progress latency ({len(samples)} updates over {len(box['submitted'])} jobs): FFmpeg line -> row repainted "
        f"p50 {p50:.0f} ms, p90 {total['p90']:.0f} ms, p99 {total['p99']:.0f} ms "
        f"(target p50 < {TARGET_P50_MS:.0f} ms: {'met' if p50 < TARGET_P50_MS else 'MISSED'})"
    )
    print(
        f"  medians: line -> published {stats['line_to_xadd_ms']['median']:.0f} ms, published -> dataChanged "
        f"{stats['xadd_to_data_changed_ms']['median']:.0f} ms, dataChanged -> painted "
        f"{stats['data_changed_to_painted_ms']['median']:.0f} ms; unmatched: {counts}"
    )
    print(f"  wrote {shown_path(path)}")
    return 0


class _no_display:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
