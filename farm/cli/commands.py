"""What each ``encodeflow`` subcommand does, given parsed arguments and settings."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from farm.client import Farm, FarmError, SubmitError, UnknownJobError
from farm.domain.jobspec import JobSpecError, PresetStore
from farm.services.queue import REDIS_READ_TIMEOUT_S
from farm.base.settings import Settings, SettingsError
from farm.base.untrusted import printable


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def run(args, settings: Settings) -> int:
    handler = HANDLERS[args.command]
    if args.command in ("up", "demo", "presets", "node", "nodes"):
        try:
            return handler(args, settings)
        except (CLIError, SettingsError, BrokenPipeError):  # SettingsError: exit 2 (a node name a running
            raise                                                # farm holds); a closed pipe: see farm.base.pipes
        except Exception as exc:
            raise CLIError(_describe(exc, settings)) from None
    farm = Farm(settings, start_embedded=args.command == "submit")
    try:
        return handler(args, settings, farm)
    except (SubmitError, UnknownJobError, JobSpecError) as exc:
        raise CLIError(str(exc), code=2) from None
    except FarmError as exc:
        raise CLIError(str(exc)) from None
    except BrokenPipeError:  # the reader went away: farm.base.pipes ends the command quietly
        raise
    except Exception as exc:
        raise CLIError(_describe(exc, settings)) from None
    finally:
        farm.close()


def _describe(exc: Exception, settings: Settings) -> str:
    """A one-line reason for an unexpected error (service down, storage refused, ...)."""
    from farm.base.settings import redact_url

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if "redis" in type(exc).__module__:
        if settings.redis_url:  # what was seen there (no answer within N s, refused, ...), not a guess
            from farm.services.checks import redis_failure

            return f"{redis_failure(exc, settings.redis_url, REDIS_READ_TIMEOUT_S).message} (ENCODEFLOW_REDIS_URL)"
        return f"the local farm's Redis failed ({name}: {redact_url(text)}); check that `encodeflow up` runs"
    return f"{name}: {text}" if text else name


def _print_job(job: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, sort_keys=True), flush=True)
        return
    video = job.get("video") or {}
    line = f"{job['id']}  {job['status']:<9} {job['progress']:5.1f}%  {video.get('name', '')}"
    if job.get("node"):
        line += f"  on {job['node']}"
    if job.get("output"):
        line += f"  -> {job['output']['key']} ({_size(job['output'].get('size'))})"
    if job.get("error"):
        line += f"  error: {job['error']}"
    print(printable(line), flush=True)  # one line per job, whatever a file's name holds


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_submit(args, settings: Settings, farm: Farm) -> int:
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
            print(f"{job['id']}  queued    {job['video']['name']}", flush=True)
    finished = farm.wait([j["id"] for j in jobs], timeout=args.timeout)
    for job in finished:
        _print_job(job, args.json)
    return 0 if all(j["status"] == "completed" for j in finished) else 1


def cmd_show(args, settings, farm: Farm) -> int:
    job = farm.show(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2, sort_keys=True))
    else:
        _print_job(job, False)
        if job.get("log_tail") and job["status"] == "failed":
            print("--- FFmpeg log (tail) ---")
            print(job["log_tail"])
    return 0


def cmd_jobs(args, settings, farm: Farm) -> int:
    jobs = farm.jobs(status=args.status, text=args.search, limit=args.limit)
    for job in jobs:
        _print_job(job, args.json)
    if not jobs and not args.json:
        print("no jobs" + (f" with status {args.status}" if args.status else ""), file=sys.stderr)
    return 0


def cmd_cancel(args, settings, farm: Farm) -> int:
    outcome = farm.cancel(args.job_id)
    text = {"removed": "cancelled (it was still queued)",
            "cancelled": "cancelled; its node stopped FFmpeg",
            "requested": "cancel requested; its node is stopping FFmpeg",
            "absent": "cancelled"}[outcome]
    print(f"{args.job_id}: {text}")
    return 0


def cmd_retry(args, settings, farm: Farm) -> int:
    farm.retry(args.job_id)
    print(f"{args.job_id}: queued again")
    return 0


def cmd_download(args, settings, farm: Farm) -> int:
    dest = farm.download(args.job_id, args.dest)
    print(dest)
    return 0


def _registry(settings: Settings):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from farm.services.embedded import EmbeddedRedisError, resolve_redis_url
    from farm.services.registry import NodeRegistry

    try:
        url = resolve_redis_url(settings, start=False)
    except EmbeddedRedisError as exc:
        raise CLIError(str(exc)) from None
    # One try: a server that gave no answer within the timeout will not give one to a second try.
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=REDIS_READ_TIMEOUT_S,
                                  socket_timeout=REDIS_READ_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    return NodeRegistry(client, settings.queue)


def cmd_nodes(args, settings) -> int:
    import dataclasses

    nodes = _registry(settings).nodes()
    for node in nodes:
        if args.json:
            print(json.dumps(dataclasses.asdict(node), sort_keys=True, default=str))
            continue
        running = ", ".join(f"{r.get('jobId', '?')[:8]} {r.get('progress', 0):.0f}%" for r in node.running) or "-"
        seen = time.time() - (node.last_seen or 0)
        # Names, hosts and job ids come from the registry, which anyone with Redis access can write.
        print(printable(f"{node.name:<20} {node.status:<9} cpu {node.cpu:5.1f}%  mem {100 * node.memory:5.1f}%  "
                        f"jobs {running}  seen {seen:.0f}s ago  {node.host}"
                        + (f"  ({node.reason})" if node.reason and node.online else "")))
    if not nodes and not args.json:
        print("no nodes have reported to this farm", file=sys.stderr)
    return 0


def cmd_node(args, settings) -> int:
    from farm.services.registry import UnknownNodeError

    state = {"drain": "drain", "pause": "pause", "resume": "run"}[args.action]
    try:
        _registry(settings).set_desired_state(args.name, state)
    except UnknownNodeError as exc:
        raise CLIError(str(exc), code=2) from None
    print(f"{args.name}: {args.action} requested")
    return 0


def cmd_presets(args, settings) -> int:
    for name, config in PresetStore(settings.data_dir / "presets.toml").all().items():
        if args.json:
            print(json.dumps({"name": name, **config.to_payload()}))
        else:
            audio = "audio" if config.include_audio else "no audio"
            print(f"{name:<18} {config.resolution:<6} {config.format:<5} {audio}")
    return 0


def cmd_up(args, settings) -> int:
    from farm.services.local_nodes import LocalFarm

    if args.nodes < 1:
        raise CLIError("--nodes must be at least 1", code=2)
    with LocalFarm(settings, nodes=args.nodes, concurrency=args.concurrency, tied_to_caller=True) as local:
        print(f"local farm up: {args.nodes} node(s) on queue {settings.queue!r}; data in {settings.data_dir}", flush=True)
        for node in local.node_info():
            print(f"  node {node['name']}: metrics on http://127.0.0.1:{node['metrics_port']}/metrics", flush=True)
        print("press Ctrl-C to stop (running jobs are finished first)", flush=True)
        local.wait()
    return 0


def cmd_demo(args, settings) -> int:
    from farm.services.local_nodes import LocalFarm, make_sample_clip

    farm = Farm(settings)
    try:
        with LocalFarm(settings, nodes=1, keep_redis=args.keep, tied_to_caller=True):
            sample = make_sample_clip(settings.data_dir / "samples" / "sample.mp4")
            print(f"sample clip: {sample}", flush=True)
            from farm.domain.jobspec import OutputConfig

            job = farm.submit([sample], OutputConfig("360p", "mp4"))[0]
            print(f"submitted job {job['id']}; transcoding to 360p MP4 ...", flush=True)
            done = farm.wait([job["id"]], timeout=300)[0]
            if done["status"] != "completed":
                print(f"job {done['status']}: {done.get('error')}", file=sys.stderr)
                return 1
            dest = farm.download(job["id"], settings.data_dir / "samples", replace=True)  # the demo's own folder
            print(f"done: {dest}", flush=True)
            print(f"(stored as {done['output']['key']} in {settings.effective_storage_url})", flush=True)
    finally:
        farm.close()
    return 0


HANDLERS = {
    "submit": cmd_submit, "show": cmd_show, "jobs": cmd_jobs, "cancel": cmd_cancel, "retry": cmd_retry,
    "download": cmd_download, "nodes": cmd_nodes, "node": cmd_node, "presets": cmd_presets,
    "up": cmd_up, "demo": cmd_demo,
}
