"""``farm-node``: parse arguments, set up logging, build the node, run it until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from farm import __version__
from farm.base.pipes import quiet_on_closed_pipe
from farm.base.settings import Settings, SettingsError
from farm.base.usage import OneLineParser, UsageError
from farm.domain import defaults  # plain numbers: `farm-node --help` does not import the agent (and BullMQ)

if TYPE_CHECKING:
    from farm_node.agent import FarmNode


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="farm-node", description="EncodeFlow farm node: runs transcode jobs from the queue.")
    p.add_argument("--version", action="version", version=f"farm-node {__version__}")
    p.add_argument("--name", help="node name shown in the panel and used by `encodeflow node` (default: host name)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address for /metrics and /health (default 0.0.0.0)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=defaults.METRICS_PORT,
        help=f"port for /metrics and /health, 0 for any free port (default {defaults.METRICS_PORT})",
    )
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics and /health")
    p.add_argument(
        "--work-dir", type=Path, help="scratch space for inputs and outputs (default: <data dir>/work/<name>)"
    )
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. gpu,fast-disk")
    p.add_argument(
        "--progress-timeout",
        type=float,
        default=defaults.PROGRESS_TIMEOUT_S,
        metavar="SECONDS",
        help="stop an FFmpeg whose progress has not moved for this long, and retry its job; "
        "keep it above the longest quiet spell of a healthy run (opening a slow input, "
        f"finishing a large output) (default {defaults.PROGRESS_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="FFmpeg threads per job, so that a job uses about N cores and a node about N x "
        "--concurrency (default: FFmpeg's own, about one thread per core)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    for flag in ("data-dir", "redis-url", "database-url", "storage-url", "queue"):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"))
    advanced = p.add_argument_group("advanced (recovery timing; every node of a farm should use the same values)")
    advanced.add_argument(
        "--lock-seconds",
        type=float,
        default=defaults.LOCK_SECONDS,
        metavar="S",
        help="how long a job stays locked to this node without a renewal (renewed every "
        "S/2); a node silent this long loses its job to another "
        f"(default {defaults.LOCK_SECONDS:g})",
    )
    advanced.add_argument(
        "--stalled-interval-seconds",
        type=float,
        default=defaults.STALLED_INTERVAL_SECONDS,
        metavar="S",
        help="how often to look for jobs whose node died; a dead node's job runs again "
        f"within about lock + this (default {defaults.STALLED_INTERVAL_SECONDS:g})",
    )
    advanced.add_argument(
        "--max-stalled",
        type=int,
        default=defaults.MAX_STALLED_COUNT,
        metavar="N",
        help=f"a job whose node died more than N times fails for good (default {defaults.MAX_STALLED_COUNT})",
    )
    advanced.add_argument(
        "--reconcile-interval-seconds",
        type=float,
        default=defaults.RECONCILE_INTERVAL_S,
        metavar="S",
        help="how often the farm settles jobs that no node can finish any more; one node "
        f"does it per interval (default {defaults.RECONCILE_INTERVAL_S:g})",
    )
    return p


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s farm-node: %(message)s")
    from farm.base import redact

    redact.install()  # no password or secret key in the node's log
    # Migrations and HTTP clients narrate every step at INFO; a node's log is for its jobs.
    for noisy in ("alembic", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.load(
            flags={k: getattr(args, k) for k in ("data_dir", "redis_url", "database_url", "storage_url", "queue")}
        )
    except SettingsError as exc:
        print(f"farm-node: {exc}", file=sys.stderr)
        return 2
    from farm_node.agent import FarmNode

    try:
        node = FarmNode(
            settings,
            name=args.name,
            concurrency=args.concurrency,
            work_dir=args.work_dir,
            tags=[t.strip() for t in args.tags.split(",") if t.strip()],
            metrics_host=args.metrics_host,
            metrics_port=None if args.no_metrics else args.metrics_port,
            lock_seconds=args.lock_seconds,
            stalled_interval_seconds=args.stalled_interval_seconds,
            max_stalled=args.max_stalled,
            reconcile_interval_seconds=args.reconcile_interval_seconds,
            progress_timeout=args.progress_timeout,
            threads=args.threads,
        )
    except ValueError as exc:
        print(f"farm-node: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(node))


async def _run(node: FarmNode) -> int:
    _install_stop_signals(asyncio.get_running_loop(), node.request_stop)
    try:
        return await node.run()
    except asyncio.CancelledError:
        if not node.stop_requests:
            raise
        return 0  # stopped while starting: what was asked
    except SettingsError as exc:  # found only once running: a name or work dir in use, say
        print(f"farm-node: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an outage (farm_node.startup.ServiceUnavailable) or a bug: restart may help
        logging.getLogger("farm_node").error("%s", exc, exc_info=logging.getLogger().isEnabledFor(logging.DEBUG))
        return 1


def _install_stop_signals(loop: asyncio.AbstractEventLoop, request_stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT (and Windows' Ctrl+Break) ask the node to stop: once drains, twice hands back.

    Windows' event loops have no ``add_signal_handler`` (NotImplementedError); there a plain signal
    handler passes the request to the loop. (Not run on Windows here: see packaging/windows.)
    """
    names = ("SIGTERM", "SIGINT", "SIGBREAK")
    for sig in [getattr(signal, name) for name in names if hasattr(signal, name)]:
        try:
            loop.add_signal_handler(sig, request_stop)
        except NotImplementedError:
            signal.signal(sig, lambda _signum, _frame: loop.call_soon_threadsafe(request_stop))


if __name__ == "__main__":
    sys.exit(main())
