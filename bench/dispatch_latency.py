"""Dispatch latency: on an idle node, the time from enqueue to FFmpeg's start. Target: p50 < 50 ms.

Product code is not touched. The node is pointed (``ENCODEFLOW_FFMPEG``) at a wrapper that appends
a wall-clock timestamp and its last argument (the output path, which names the job) to a file,
then ``exec``s the real FFmpeg; the node's start-up ``-version``/``-encoders`` calls go through it
too and are told apart by that argument. Each job's input is uploaded and its rows recorded before
the clock starts, so the clock covers only ``QueueClient.enqueue`` and what follows. Jobs go one
at a time: the next is enqueued a random 0.5-8 s after the previous one finished, so the node is
idle each time, and the moment falls anywhere in its 1 s heartbeat and in one whole cycle of its
queue wait (a blocking pop of BullMQ's drainDelay, then whatever pause follows it; see the
listening probe).

Per job, on one clock (``time.time``, shared by this process, the node and the wrapper):

    t_enqueue --(enqueue call)--> BullMQ timestamp --(node's blocking pop wakes, moveToActive)-->
    processedOn --(cancel check, job row read, mark_active)--> started_at (the row) --(row re-read,
    download, probe, build args, spawn)--> FFmpeg start (the wrapper's stamp)

BullMQ's ``timestamp``/``processedOn`` have millisecond resolution; the others microseconds.

Then the listening probe: with no job coming, Redis's MONITOR records when the idle node issues its
blocking pop (``BZPOPMIN`` on the queue's marker key) for ``--probe`` seconds. Between the end of
one pop's timeout and the next pop, the node is not listening: a job enqueued then waits for it.

    python bench/dispatch_latency.py [--runs 50] [--probe 80] [--out bench/results/dispatch_latency.json]
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
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

from farm.client import Farm
from farm.domain.jobspec import OutputConfig
from farm.domain.keyspace import Keyspace
from farm.domain.media import MediaInfo, find_ffmpeg, probe
from farm.domain.object_keys import input_key
from farm.domain.payload import queue_payload
from farm.services.db import repo
from farm.services.queue import QueueClient

NAME = "dispatch_latency"
TARGET_P50_MS = 50.0
CLIP = {"seconds": 0.5, "width": 320, "height": 240}
CONFIG = OutputConfig(resolution="720p", format="mp4", include_audio=True)
IDLE_GAP_S = (0.5, 8.0)
# Jobs are split by the idle time before them at redis-py's default read timeout: an idle wait as long
# as its connection's read timeout leaves a node deaf for 2-20 s, which this split would show.
SHORT_IDLE_S = 5.0
CALIBRATION_SPAWNS = 20


# -- the FFmpeg wrapper ------------------------------------------------------------------------


def _bash_has_epochrealtime(bash: str) -> bool:
    done = subprocess.run([bash, "-c", 'echo "$EPOCHREALTIME"'], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().replace(",", ".").replace(".", "", 1).isdigit()


def write_wrapper(path: Path, real_ffmpeg: str, stamps: Path) -> str:
    """The wrapper script; returns which kind it is.

    bash 5's ``$EPOCHREALTIME`` gives microseconds without forking ``date``, and bash starts in a
    millisecond or two; a Python wrapper (the fallback) would add the interpreter's start-up.
    """
    bash = shutil.which("bash")
    if bash and _bash_has_epochrealtime(bash):
        kind = "bash $EPOCHREALTIME"
        text = (
            f"#!{bash}\n"
            "# EncodeFlow benchmark: note when FFmpeg was started (epoch us) and for what, then become it.\n"
            f"printf '%s %s\\n' \"${{EPOCHREALTIME//[.,]/}}\" \"${{@: -1}}\" >> '{stamps}'\n"
            f"exec '{real_ffmpeg}' \"$@\"\n"
        )
    else:
        kind = "python -I -S time.time_ns"
        text = (
            f"#!{sys.executable} -I -S\n"
            "import os, sys, time\n"
            "stamp = time.time_ns() // 1000\n"
            f"with open({str(stamps)!r}, 'a') as f:\n"
            "    f.write(f'{stamp} {sys.argv[-1]}\\n')\n"
            f"os.execv({real_ffmpeg!r}, [{real_ffmpeg!r}, *sys.argv[1:]])\n"
        )
    path.write_text(text)
    path.chmod(0o755)
    return kind


def read_stamps(stamps: Path) -> list[tuple[int, str]]:
    """(epoch microseconds, last argument) per FFmpeg started through the wrapper."""
    if not stamps.exists():
        return []
    out = []
    for line in stamps.read_text().splitlines():
        stamp, _, last = line.partition(" ")
        out.append((int(stamp), last))
    return out


async def calibrate(wrapper: Path, stamps: Path) -> list[float]:
    """How long the wrapper takes to record its stamp, spawned as the node spawns FFmpeg
    (``asyncio.create_subprocess_exec``): milliseconds from just before the spawn to the stamp."""
    samples = []
    for _ in range(CALIBRATION_SPAWNS):
        before = len(read_stamps(stamps))
        began = time.time_ns()
        proc = await asyncio.create_subprocess_exec(
            str(wrapper),
            "-hide_banner",
            "-version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        await proc.wait()
        stamp, _ = read_stamps(stamps)[before]
        samples.append((stamp * 1000 - began) / 1e6)
        await asyncio.sleep(0.05)
    return samples


# -- the listening probe ----------------------------------------------------------------------


class ListeningProbe(threading.Thread):
    """Records, from Redis's MONITOR, each blocking pop (``BZPOPMIN`` on the queue's marker key)
    until ``stop_at`` (epoch seconds) has passed."""

    def __init__(self, redis_url: str, queue: str):
        super().__init__(name="listening-probe", daemon=True)
        self.redis_url = redis_url
        self.marker = Keyspace(queue).marker
        self.pops: list[dict] = []
        self.ready = threading.Event()
        self.stop_at = math.inf

    def run(self) -> None:
        # Quiet spells are short (the heartbeat writes every second), but redis-py's default 5 s read
        # timeout is the very thing this probe looks at in the node: stay clear of it.
        client = redis.Redis.from_url(self.redis_url, socket_timeout=60)
        with client.monitor() as monitor:
            self.ready.set()
            for command in monitor.listen():  # the heartbeat sends commands every second, so this ticks
                text = command.get("command", "")
                if text.upper().startswith("BZPOPMIN") and self.marker in text:
                    self.pops.append(
                        {
                            "at": command["time"],
                            "timeout_s": float(text.split()[-1]),
                            "client_port": command.get("client_port"),
                        }
                    )
                if time.time() >= self.stop_at:
                    break
        client.close()


def listening_probe(settings, redis_url: str, clip: Path, stamps: Path, seconds: float) -> dict:
    """Run one job, then watch the idle node's blocking pops for ``seconds`` from the moment it finished."""
    probe = ListeningProbe(redis_url, settings.queue)
    probe.start()
    probe.ready.wait(10)
    [job] = asyncio.run(measure(settings, redis_url, clip, stamps, 1, quiet=True))
    began = job["raw"]["bull_finished_on_ms"] / 1000
    probe.stop_at = began + seconds
    probe.join(seconds + 30)
    pops = [
        {"at_s": round(p["at"] - began, 3), "timeout_s": p["timeout_s"], "client_port": p["client_port"]}
        for p in probe.pops
        if p["at"] >= began - 0.05
    ]
    blind, listening = [], 0.0
    for pop, following in zip(pops, pops[1:] + [None], strict=True):
        until = following["at_s"] if following else seconds
        listening += max(0.0, min(pop["timeout_s"], until - pop["at_s"]))
        gap = until - (pop["at_s"] + pop["timeout_s"])
        if gap > 0:
            blind.append(round(gap, 3))
    return {
        "seconds": seconds,
        "from": "the BullMQ finishedOn of a job run just before",
        "pops": pops,
        "connections_used": len({p["client_port"] for p in pops}),
        "blind_windows_s": blind,
        "listening_fraction": round(listening / seconds, 3),
        # A job enqueued at a uniformly random moment of the probe waits this long on average.
        "mean_wait_for_random_enqueue_s": round(sum(b * b / 2 for b in blind) / seconds, 3),
    }


# -- one job -----------------------------------------------------------------------------------


def prepare(farm: Farm, clip: Path, info: MediaInfo) -> tuple[str, dict]:
    """Upload the input and record the Video and Job rows as ``Farm.submit`` does, minus the enqueue."""
    video_id = str(uuid.uuid4())
    key = input_key(video_id, clip.name)
    size = farm.storage.upload_file(clip, key)
    video = repo.create_video(
        farm.db,
        id=video_id,
        name=clip.name,
        key=key,
        submitted_by="bench",
        **repo.probe_fields(info) | {"size": size},
    )
    job = repo.create_job(farm.db, video.id, CONFIG.to_payload())
    return job.id, queue_payload(job.id, key, clip.name, CONFIG, video_id=video.id)


async def wait_finished(redis, stream: str, job_id: str, last_id: str, timeout: float = 120) -> str:
    """Block on the queue's event stream until the job completed or failed; returns which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _key, entries in await redis.xread({stream: last_id}, block=1000) or []:
            for entry_id, fields in entries:
                last_id = entry_id
                if fields.get("jobId") == job_id and fields.get("event") in ("completed", "failed"):
                    return fields["event"]
    raise TimeoutError(f"job {job_id} did not finish within {timeout} s")


async def one_job(
    farm: Farm, queue: QueueClient, clip: Path, info: MediaInfo, stamps: Path, previous_finished_ms: int | None
) -> dict:
    job_id, payload = prepare(farm, clip, info)
    await asyncio.sleep(random.uniform(*IDLE_GAP_S))
    stream = queue.keys.events
    newest = await queue.redis.xrevrange(stream, count=1)
    last_id = newest[0][0] if newest else "0-0"

    t_enqueue = time.time_ns()
    await queue.enqueue(job_id, payload)
    t_enqueued = time.time_ns()
    outcome = await wait_finished(queue.redis, stream, job_id, last_id)
    if outcome != "completed":
        raise RuntimeError(f"job {job_id} {outcome}: {repo.get_job(farm.db, job_id).error}")

    bull = await queue.queue.getJob(job_id)
    row = repo.get_job(farm.db, job_id)
    [ffmpeg_us] = [stamp for stamp, last in read_stamps(stamps) if f"/{job_id}-" in last]
    t0_ms = t_enqueue / 1e6
    started_ms = row.started_at.timestamp() * 1000
    ffmpeg_ms = ffmpeg_us / 1000
    return {
        "job_id": job_id,
        # How long the node had been idle (since its previous job finished) when this one came.
        "idle_before_s": None if previous_finished_ms is None else round((t0_ms - previous_finished_ms) / 1000, 3),
        "enqueue_to_ffmpeg_ms": ffmpeg_ms - t0_ms,
        "enqueue_call_ms": (t_enqueued - t_enqueue) / 1e6,
        "bull_timestamp_to_processed_ms": bull.processedOn - bull.timestamp,
        "enqueue_to_processed_ms": bull.processedOn - t0_ms,
        "processed_to_row_active_ms": started_ms - bull.processedOn,
        "row_active_to_ffmpeg_ms": ffmpeg_ms - started_ms,
        "processed_to_ffmpeg_ms": ffmpeg_ms - bull.processedOn,
        "raw": {
            "t_enqueue_ns": t_enqueue,
            "t_enqueued_ns": t_enqueued,
            "bull_timestamp_ms": bull.timestamp,
            "bull_processed_on_ms": bull.processedOn,
            "bull_finished_on_ms": bull.finishedOn,
            "row_started_at_epoch_s": row.started_at.timestamp(),
            "ffmpeg_start_epoch_us": ffmpeg_us,
        },
    }


async def measure(settings, redis_url: str, clip: Path, stamps: Path, runs: int, quiet: bool = False) -> list[dict]:
    farm = Farm(settings)
    queue = QueueClient(redis_url, settings.queue)
    info = probe(clip)
    samples = []
    try:
        for index in range(runs):
            previous = samples[-1]["raw"]["bull_finished_on_ms"] if samples else None
            sample = await one_job(farm, queue, clip, info, stamps, previous)
            samples.append(sample)
            if not quiet and ((index + 1) % 10 == 0 or index + 1 == runs):
                print(f"  {index + 1}/{runs} jobs", flush=True)
    finally:
        await queue.close()
        farm.close()
    return samples


def main() -> int:
    def extra(parser):
        parser.add_argument(
            "--probe",
            type=float,
            default=80.0,
            help="seconds of the listening probe after the jobs, 0 to skip (default 80)",
        )

    opts = parse_args(NAME, __doc__.splitlines()[0], runs=50, runs_help="jobs, one at a time", extra=extra)
    with isolated_data_dir(NAME, keep=opts.keep) as root:
        clip = root / "clips" / "tiny.mp4"
        clip_info = make_clip(clip, **CLIP)
        stamps = root / "ffmpeg-starts.txt"
        wrapper = root / "ffmpeg-wrapper"
        wrapper_kind = write_wrapper(wrapper, find_ffmpeg(), stamps)
        calibration = asyncio.run(calibrate(wrapper, stamps))
        settings = load_settings(ffmpeg=str(wrapper))
        with running_farm(settings, root / "node.log") as local:
            env = environment(local.redis.url)
            print(
                f"{opts.runs} jobs ({CLIP['seconds']} s {CLIP['width']}x{CLIP['height']} clips), one at a time, "
                f"{IDLE_GAP_S[0]}-{IDLE_GAP_S[1]} s apart ...",
                flush=True,
            )
            samples = asyncio.run(measure(settings, local.redis.url, clip, stamps, opts.runs))
            probe_result = None
            if opts.probe > 0:
                print(f"listening probe: {opts.probe:.0f} s of an idle node ...", flush=True)
                probe_result = listening_probe(settings, local.redis.url, clip, stamps, opts.probe)

    keys = [k for k in samples[0] if k.endswith("_ms")]
    stats = {k: describe([s[k] for s in samples], digits=2) for k in keys}
    total = "enqueue_to_ffmpeg_ms"
    by_idle = {
        f"idle_under_{SHORT_IDLE_S:.0f}_s": describe(
            [s[total] for s in samples if s["idle_before_s"] is not None and s["idle_before_s"] < SHORT_IDLE_S], 2
        ),
        f"idle_{SHORT_IDLE_S:.0f}_s_or_more": describe(
            [s[total] for s in samples if s["idle_before_s"] is not None and s["idle_before_s"] >= SHORT_IDLE_S], 2
        ),
    }
    p50, p99 = stats[total]["median"], stats[total]["p99"]
    result = {
        "benchmark": NAME,
        "target": {"enqueue_to_ffmpeg_p50_ms_max": TARGET_P50_MS},
        "result": {
            "enqueue_to_ffmpeg_p50_ms": p50,
            "enqueue_to_ffmpeg_p99_ms": p99,
            "met": p50 < TARGET_P50_MS,
            "stats_ms": stats,
            "enqueue_to_ffmpeg_ms_by_idle_before": by_idle,
            "wrapper_spawn_to_stamp_ms": describe(calibration, digits=2),
            "listening_probe": probe_result,
        },
        "method": {
            "clip": clip_info,
            "output_config": CONFIG.to_payload(),
            "jobs": opts.runs,
            "idle_gap_s": list(IDLE_GAP_S),
            "farm": "LocalFarm, 1 node (concurrency 1), embedded Redis, SQLite, folder storage in a temp data dir",
            "start_clock": "time.time_ns() right before QueueClient.enqueue (one client kept open); the input "
            "was uploaded and its rows recorded before",
            "ffmpeg_clock": f"wrapper script ({wrapper_kind}) named by ENCODEFLOW_FFMPEG, stamping then exec-ing "
            "the real FFmpeg",
            "wrapper_calibration": f"{CALIBRATION_SPAWNS} spawns of the wrapper with asyncio.create_subprocess_exec; "
            "ms from before the spawn to its stamp (part of every enqueue_to_ffmpeg sample)",
            "idle_before": "enqueue time minus the previous job's BullMQ finishedOn (none for the first job)",
            "listening_probe": "Redis MONITOR around one more job and for --probe seconds after it finished, "
            "recording the node's BZPOPMIN on the marker key",
            "percentiles": "linear interpolation between nearest ranks",
        },
        "environment": env,
        "samples": samples,
    }
    path = write_result(opts.out, result)
    s = stats
    print(
        f"dispatch latency ({opts.runs} jobs): enqueue -> FFmpeg start p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(target p50 < {TARGET_P50_MS:.0f} ms: {'met' if p50 < TARGET_P50_MS else 'MISSED'})"
    )
    print(
        f"  medians: enqueue -> picked up (processedOn) {s['enqueue_to_processed_ms']['median']:.1f} ms, "
        f"picked up -> row active {s['processed_to_row_active_ms']['median']:.1f} ms, "
        f"row active -> FFmpeg start {s['row_active_to_ffmpeg_ms']['median']:.1f} ms "
        f"(wrapper itself {describe(calibration)['median']:.1f} ms)"
    )
    for label, d in by_idle.items():
        if d["n"]:
            print(
                f"  {label.replace('_', ' ')} before the job: n={d['n']}, p50 {d['median']:.1f} ms, "
                f"max {d['max']:.1f} ms"
            )
    if probe_result:
        print(
            f"  listening probe ({opts.probe:.0f} s idle): listening {100 * probe_result['listening_fraction']:.0f} % "
            f"of the time; blind windows {probe_result['blind_windows_s']} s; "
            f"{probe_result['connections_used']} connection(s)"
        )
    print(f"  wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
