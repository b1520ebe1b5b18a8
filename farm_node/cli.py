"""``farm-node``: parse arguments, set up logging, build the node, run it until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from farm import __version__
from farm.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm-node", description="EncodeFlow farm node: runs transcode jobs from the queue.")
    p.add_argument("--version", action="version", version=f"farm-node {__version__}")
    p.add_argument("--name", help="node name shown in the panel and used by `encodeflow node` (default: host name)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address for /metrics and /health (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=9464, help="port for /metrics and /health, 0 for any free port (default 9464)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics and /health")
    p.add_argument("--work-dir", type=Path, help="scratch space for inputs and outputs (default: <data dir>/work/<name>)")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. gpu,fast-disk")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    for flag in ("data-dir", "redis-url", "database-url", "storage-url", "queue"):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s farm-node: %(message)s")
    # Migrations and HTTP clients narrate every step at INFO; a node's log is for its jobs.
    for noisy in ("alembic", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.load(flags={k: getattr(args, k) for k in
                                        ("data_dir", "redis_url", "database_url", "storage_url", "queue")})
    except SettingsError as exc:
        print(f"farm-node: {exc}", file=sys.stderr)
        return 2
    from farm_node.agent import FarmNode

    try:
        node = FarmNode(settings, name=args.name, concurrency=args.concurrency, work_dir=args.work_dir,
                        tags=[t.strip() for t in args.tags.split(",") if t.strip()],
                        metrics_host=args.metrics_host,
                        metrics_port=None if args.no_metrics else args.metrics_port)
    except ValueError as exc:
        print(f"farm-node: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(node))


async def _run(node) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    try:
        return await node.run()
    except Exception as exc:
        logging.getLogger("farm_node").error("%s", exc, exc_info=logging.getLogger().isEnabledFor(logging.DEBUG))
        return 1


if __name__ == "__main__":
    sys.exit(main())
