"""Farm overhead: a 30 s 1080p clip to 720p MP4 through the farm, against the same FFmpeg command
run directly. Target: farm/direct (medians) at most 1.10.

Farm run: ``Farm.submit`` (probe, upload, database rows, enqueue) until ``Farm.wait`` returns the
job ``completed``, on a ``LocalFarm`` with one warm node (embedded Redis, SQLite, folder storage in
a temp data dir). Direct run: the command ``farm_node.ffmpeg_args.build_args`` makes for the probed
clip, run with ``subprocess``. One warm-up pair is run first and kept out of the statistics; the
measured runs alternate (farm, direct), (direct, farm), ... so that drifting background load on a
shared machine falls on both sides.

    python bench/farm_overhead.py [--runs 5] [--out bench/results/farm_overhead.json]
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path

from common import (
    ForeignCpu,
    describe,
    environment,
    isolated_data_dir,
    load_settings,
    make_clip,
    parse_args,
    placeholder_args,
    running_farm,
    shown_path,
    write_result,
)

from farm.client import Farm
from farm.domain.jobspec import OutputConfig
from farm.domain.media import find_ffmpeg, probe
from farm_node.ffmpeg_args import build_args

NAME = "farm_overhead"
TARGET_RATIO = 1.10
CLIP = {"seconds": 30, "width": 1920, "height": 1080}
CONFIG = OutputConfig(resolution="720p", format="mp4", include_audio=True)


def _epoch(iso: str | None) -> float | None:
    """Epoch seconds of a job JSON timestamp (``2024-05-01T12:00:00.123Z``)."""
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def farm_run(farm: Farm, clip: Path, previous: dict | None, redis_pid: int | None = None) -> dict:
    """One job through the farm; ``previous`` is the farm run before it (the node's last job)."""
    foreign = ForeignCpu([redis_pid]).start()
    began_wall, began = time.time(), time.perf_counter()
    [job] = farm.submit([clip], CONFIG, submitted_by="bench")
    submitted = time.perf_counter()
    [done] = farm.wait([job.id], timeout=600)
    job = done.to_json()
    ended, ended_wall = time.perf_counter(), time.time()
    load = foreign.stop()
    if job["status"] != "completed":
        raise RuntimeError(f"farm job {job['id']} ended {job['status']}: {job.get('error')}")
    created, started, finished = (_epoch(job[k]) for k in ("created_at", "started_at", "finished_at"))
    return {
        "seconds": ended - began,
        "job_id": job["id"],
        "finished_at_epoch_s": finished,
        # How long the node had been idle when this submit began (its pick-up depends on it).
        "node_idle_before_s": None if previous is None else began_wall - previous["finished_at_epoch_s"],
        "output_bytes": job["output"]["size"],
        # CPU used meanwhile by processes other than this benchmark, its node and its Redis.
        "other_load": load,
        # Where the time went, from the job's own timestamps (millisecond resolution).
        "breakdown": {
            "submit_call_s": submitted - began,  # probe + upload + rows + enqueue, in this process
            "submit_to_row_created_s": created - began_wall,  # probe + upload + video row
            "queue_wait_s": job["queue_wait_seconds"],  # job row created -> node marks it active
            "node_run_s": finished - started,  # download, probe, FFmpeg, verify, upload, finish row
            "finished_to_wait_returned_s": ended_wall - finished,  # event -> Farm.wait sees it
        },
    }


def direct_run(args: list[str], output: Path, redis_pid: int | None = None) -> dict:
    output.unlink(missing_ok=True)
    foreign = ForeignCpu([redis_pid]).start()
    began = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - began
    if done.returncode != 0:  # say why: a bare CalledProcessError hides FFmpeg's message
        raise RuntimeError(
            f"direct FFmpeg run exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-2000:].strip() or '(no message)'}"
        )
    return {"seconds": seconds, "output_bytes": output.stat().st_size, "other_load": foreign.stop()}


def main() -> int:
    opts = parse_args(NAME, __doc__.splitlines()[0], runs=5, runs_help="measured farm/direct pairs")
    with isolated_data_dir(NAME, keep=opts.keep) as root:
        print(f"making a {CLIP['seconds']} s {CLIP['width']}x{CLIP['height']} clip ...", flush=True)
        clip = root / "clips" / "bench-1080p-30s.mp4"
        clip_info = make_clip(clip, **CLIP)
        settings = load_settings()
        info = probe(clip)
        direct_out = root / "direct" / f"output.{CONFIG.extension}"
        direct_out.parent.mkdir()
        args = build_args(find_ffmpeg(settings.ffmpeg), clip, direct_out, CONFIG, info)

        with running_farm(settings, root / "node.log") as local:
            farm = Farm(settings)
            env = environment(local.redis.url)
            redis_pid = local.redis.pid
            try:
                print("warm-up pair ...", flush=True)
                warmup = {
                    "farm": farm_run(farm, clip, None, redis_pid),
                    "direct": direct_run(args, direct_out, redis_pid),
                }
                runs, last_farm = [], warmup["farm"]
                for index in range(opts.runs):
                    order = ("farm", "direct") if index % 2 == 0 else ("direct", "farm")
                    pair = {"order": list(order)}
                    for side in order:
                        if side == "farm":
                            pair["farm"] = last_farm = farm_run(farm, clip, last_farm, redis_pid)
                        else:
                            pair["direct"] = direct_run(args, direct_out, redis_pid)
                    runs.append(pair)
                    print(
                        f"  run {index + 1}/{opts.runs}: farm {pair['farm']['seconds']:.2f} s, "
                        f"direct {pair['direct']['seconds']:.2f} s (other processes' CPU meanwhile: "
                        f"{pair['farm']['other_load']['foreign_cpu_s']:.1f} s, "
                        f"{pair['direct']['other_load']['foreign_cpu_s']:.1f} s)",
                        flush=True,
                    )
            finally:
                farm.close()

    farm_s = describe([r["farm"]["seconds"] for r in runs])
    direct_s = describe([r["direct"]["seconds"] for r in runs])
    ratio = farm_s["median"] / direct_s["median"]
    breakdown = {key: describe([r["farm"]["breakdown"][key] for r in runs]) for key in runs[0]["farm"]["breakdown"]}
    node_overhead = describe([r["farm"]["breakdown"]["node_run_s"] - direct_s["median"] for r in runs])
    # The same ratio with each farm run's queue wait taken out: what the farm costs once a node
    # has picked the job up, i.e. without the pick-up delay of an idle node (see dispatch_latency).
    without_wait = describe([r["farm"]["seconds"] - r["farm"]["breakdown"]["queue_wait_s"] for r in runs])
    ratio_without_wait = without_wait["median"] / direct_s["median"]
    result = {
        "benchmark": NAME,
        "target": {"ratio_farm_over_direct_max": TARGET_RATIO},
        "result": {
            "ratio_of_medians": round(ratio, 4),
            "met": ratio <= TARGET_RATIO,
            "farm_seconds": farm_s,
            "direct_seconds": direct_s,
            "pairwise_ratios": [round(r["farm"]["seconds"] / r["direct"]["seconds"], 4) for r in runs],
            "ratio_of_medians_without_queue_wait": round(ratio_without_wait, 4),
            "farm_seconds_without_queue_wait": without_wait,
            "farm_breakdown_seconds": breakdown,
            "node_run_minus_direct_median_seconds": node_overhead,
            "other_processes_cpu_seconds": {
                side: describe([r[side]["other_load"]["foreign_cpu_s"] for r in runs]) for side in ("farm", "direct")
            },
        },
        "method": {
            "clip": clip_info,
            "output_config": CONFIG.to_payload(),
            "ffmpeg_command": placeholder_args(args, {str(clip): "<input>", str(direct_out): "<output>"}),
            "farm": "LocalFarm, 1 node (concurrency 1), embedded Redis, SQLite, folder storage in a temp "
            "data dir; timed from before Farm.submit to Farm.wait returning the job completed",
            "direct": "subprocess.run of the same build_args command (stdout to /dev/null, stderr piped), "
            "timed around the call; the farm's idle node stays up meanwhile",
            "runs": opts.runs,
            "warmup_pairs": 1,
            "order": "alternating: (farm, direct), (direct, farm), ...",
            "statistic": "median of the runs; ratio = median(farm) / median(direct)",
            "other_load": "per run, CPU seconds the machine spent outside this benchmark's process tree and "
            "its Redis (psutil.cpu_times busy minus the tree's cpu_times), and steal time",
        },
        "environment": env,
        "samples": {"warmup": warmup, "runs": runs},
    }
    path = write_result(opts.out, result)
    print(
        f"farm overhead (30 s 1080p -> 720p mp4, {opts.runs} runs): farm median {farm_s['median']:.2f} s, "
        f"direct median {direct_s['median']:.2f} s, ratio {ratio:.3f} "
        f"(target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'MISSED'})"
    )
    b = {k: v["median"] for k, v in breakdown.items()}
    print(
        f"  farm breakdown (medians): submit {b['submit_call_s']:.2f} s, queue wait {b['queue_wait_s']:.3f} s, "
        f"node run {b['node_run_s']:.2f} s, wait notices {b['finished_to_wait_returned_s']:.3f} s"
    )
    waits = ", ".join(f"{r['farm']['breakdown']['queue_wait_s']:.2f}" for r in runs)
    print(f"  queue waits per run: {waits} s; ratio with them taken out: {ratio_without_wait:.3f}")
    print(f"  wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
