"""What each ``encodeflow`` subcommand does, given parsed arguments and settings."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from farm.base.errors import FarmError, describe
from farm.base.settings import Settings
from farm.base.units import format_size
from farm.base.untrusted import printable
from farm.base.usage import UsageError
from farm.client import REDIS_READ_TIMEOUT_S, Farm
from farm.domain.job import Job
from farm.domain.jobspec import PresetStore
from farm.domain.status import JobStatus

# The subcommands that need no Farm facade (they run a local farm, or read the presets file).
_WITHOUT_FARM = ("up", "demo", "presets")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the subcommand. Whatever stops it comes out as a ``FarmError``: the one line for the user
    and the exit code (``farm.cli.main`` prints and returns them)."""
    handler = HANDLERS[args.command]
    try:
        if args.command in _WITHOUT_FARM:
            return handler(args, settings)
        farm = Farm(settings, start_embedded=args.command == "submit")
        try:
            return handler(args, settings, farm)
        finally:
            farm.close()
    except (FarmError, BrokenPipeError):  # ours say it already; a closed pipe: farm.base.pipes ends quietly
        raise
    except Exception as exc:
        raise _unexpected(exc, settings) from None


def _unexpected(exc: Exception, settings: Settings) -> FarmError:
    """One line for an error not written for a user (a service's own): what Redis did, or its type and text."""
    import redis

    if not isinstance(exc, redis.RedisError):
        return FarmError(describe(exc))
    if settings.redis_url:  # what was seen there (no answer within N s, refused, ...), not a guess
        from farm.services.checks import redis_failure

        return FarmError(
            f"{redis_failure(exc, settings.redis_url, REDIS_READ_TIMEOUT_S).message} (ENCODEFLOW_REDIS_URL)"
        )
    from farm.base.redact import redact_url

    return FarmError(f"the local farm's Redis failed ({redact_url(describe(exc))}); check that `encodeflow up` runs")


def _print_job(job: Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.to_json(), sort_keys=True), flush=True)
        return
    line = f"{job.id}  {job.status:<9} {job.progress:5.1f}%  {job.video.name}"
    if job.node:
        line += f"  on {job.node}"
    output = job.output
    if output is not None:
        line += f"  -> {output.key} ({format_size(output.size) if output.size is not None else '?'})"
    if job.error:
        line += f"  error: {job.error}"
    print(printable(line), flush=True)  # one line per job, whatever a file's name holds


def cmd_submit(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    from farm.cli.parser import output_config_from_args

    config = output_config_from_args(args, PresetStore(settings.data_dir / "presets.toml"), settings.default_preset)
    show_progress = sys.stderr.isatty() and not args.json

    def progress(path: Path, done: int, total: int) -> None:
        if show_progress:
            print(f"\ruploading {path.name}: {100 * done / max(total, 1):5.1f}%", end="", file=sys.stderr, flush=True)

    jobs = farm.submit(args.files, config, priority=args.priority, progress=progress)
    if show_progress:
        print(file=sys.stderr)
    if not args.wait:
        for job in jobs:
            _print_job(job, args.json)
        return 0
    if not args.json:
        for job in jobs:
            print(f"{job.id}  queued    {job.video.name}", flush=True)
    finished = farm.wait([job.id for job in jobs], timeout=args.timeout)
    for job in finished:
        _print_job(job, args.json)
    return 0 if all(job.status == JobStatus.COMPLETED for job in finished) else 1


def cmd_show(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    job = farm.show(args.job_id)
    if args.json:
        print(json.dumps(job.to_json(), indent=2, sort_keys=True))
    else:
        _print_job(job, False)
        if job.log_tail and job.status == JobStatus.FAILED:
            print("--- FFmpeg log (tail) ---")
            print(job.log_tail)
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    jobs = farm.jobs(status=args.status, text=args.search, limit=args.limit)
    for job in jobs:
        _print_job(job, args.json)
    if not jobs and not args.json:
        print("no jobs" + (f" with status {args.status}" if args.status else ""), file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    outcome = farm.cancel(args.job_id)
    text = {
        "removed": "cancelled (it was still queued)",
        "cancelled": "cancelled; its node stopped FFmpeg",
        "requested": "cancel requested; its node is stopping FFmpeg",
        "absent": "cancelled",
    }[outcome]
    print(f"{args.job_id}: {text}")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    farm.retry(args.job_id)
    print(f"{args.job_id}: queued again")
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    dest = farm.download(args.job_id, args.dest)
    print(dest)
    return 0


def cmd_nodes(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    nodes = farm.nodes()
    for node in nodes:
        if args.json:
            print(json.dumps(node.to_dict(), sort_keys=True, default=str))
            continue
        running = ", ".join(f"{r.get('jobId', '?')[:8]} {r.get('progress', 0):.0f}%" for r in node.running) or "-"
        seen = time.time() - (node.last_seen or 0)
        # Names, hosts and job ids come from the registry, which anyone with Redis access can write.
        print(
            printable(
                f"{node.name:<20} {node.status:<9} cpu {node.cpu:5.1f}%  mem {100 * node.memory:5.1f}%  "
                f"jobs {running}  seen {seen:.0f}s ago  {node.host}"
                + (f"  ({node.reason})" if node.reason and node.online else "")
            )
        )
    if not nodes and not args.json:
        print("no nodes have reported to this farm", file=sys.stderr)
    return 0


def cmd_node(args: argparse.Namespace, settings: Settings, farm: Farm) -> int:
    state = {"drain": "drain", "pause": "pause", "resume": "run"}[args.action]
    farm.control_node(args.name, state)  # UnknownNodeError: exit 2
    print(f"{args.name}: {args.action} requested")
    return 0


def cmd_presets(args: argparse.Namespace, settings: Settings) -> int:
    for name, config in PresetStore(settings.data_dir / "presets.toml").all().items():
        if args.json:
            print(json.dumps({"name": name, **config.to_payload()}))
        else:
            audio = "audio" if config.include_audio else "no audio"
            print(f"{name:<18} {config.resolution:<6} {config.format:<5} {audio}")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from farm.services.local_nodes import LocalFarm

    if args.nodes < 1:
        raise UsageError("--nodes must be at least 1")
    with LocalFarm(settings, nodes=args.nodes, concurrency=args.concurrency, tied_to_caller=True) as local:
        print(
            f"local farm up: {args.nodes} node(s) on queue {settings.queue!r}; data in {settings.data_dir}", flush=True
        )
        for node in local.node_info():
            print(f"  node {node['name']}: metrics on http://127.0.0.1:{node['metrics_port']}/metrics", flush=True)
        print("press Ctrl-C to stop (running jobs are finished first)", flush=True)
        local.wait()
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from farm.services.local_nodes import LocalFarm, make_sample_clip

    farm = Farm(settings)
    try:
        with LocalFarm(settings, nodes=1, keep_redis=args.keep, tied_to_caller=True):
            sample = make_sample_clip(settings.data_dir / "samples" / "sample.mp4")
            print(f"sample clip: {sample}", flush=True)
            from farm.domain.jobspec import OutputConfig

            job = farm.submit([sample], OutputConfig("360p", "mp4"))[0]
            print(f"submitted job {job.id}; transcoding to 360p MP4 ...", flush=True)
            done = farm.wait([job.id], timeout=300)[0]
            if done.status != JobStatus.COMPLETED or done.output is None:
                print(f"job {done.status}: {done.error}", file=sys.stderr)
                return 1
            dest = farm.download(job.id, settings.data_dir / "samples", replace=True)  # the demo's own folder
            print(f"done: {dest}", flush=True)
            print(f"(stored as {done.output.key} in {settings.effective_storage_url})", flush=True)
    finally:
        farm.close()
    return 0


HANDLERS: dict[str, Callable[..., int]] = {
    "submit": cmd_submit,
    "show": cmd_show,
    "jobs": cmd_jobs,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "download": cmd_download,
    "nodes": cmd_nodes,
    "node": cmd_node,
    "presets": cmd_presets,
    "up": cmd_up,
    "demo": cmd_demo,
}
