"""The ``encodeflow`` command line: its subcommands, flags and exit codes, and the output config they name.

Exit codes: 0 success; 2 usage or validation error (one line on stderr, nothing uploaded or
enqueued); 1 any other failure, and with ``submit --wait``, any job that ended failed or cancelled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from farm import __version__
from farm.base.usage import OneLineParser as _Parser
from farm.domain.jobspec import FORMATS, RESOLUTIONS, OutputConfig, PresetStore
from farm.domain.status import STATUSES


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("farm (override ENCODEFLOW_* and the config file)")
    group.add_argument("--data-dir", dest="data_dir")
    group.add_argument("--redis-url", dest="redis_url")
    group.add_argument("--database-url", dest="database_url")
    group.add_argument("--storage-url", dest="storage_url")
    group.add_argument("--queue", dest="queue")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="encodeflow", description="EncodeFlow render farm: submit and manage transcode jobs.")
    parser.add_argument("--version", action="version", version=f"encodeflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("submit", help="upload files and enqueue one job per file")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--resolution", choices=list(RESOLUTIONS), help="short side of the output (default 720p)")
    p.add_argument("--format", choices=list(FORMATS), help="mp4 (H.264+AAC), webm (VP9+Opus), hevc (H.265+AAC)")
    p.add_argument("--no-audio", action="store_true", help="drop the audio")
    p.add_argument("--upscale", action="store_true", help="allow upscaling a smaller source")
    p.add_argument("--preset", help="a named preset; --resolution/--format/--no-audio override its fields")
    p.add_argument("--priority", type=int, default=0, help="1 runs first; 0 (default) is plain FIFO")
    p.add_argument("--wait", action="store_true", help="wait until every job ends; exit 1 if any failed")
    p.add_argument("--timeout", type=float, help="with --wait, give up after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per job per line")

    p = sub.add_parser("show", help="one job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--search", help="match a file name or job id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")

    for name, text in (("cancel", "cancel a queued or running job"), ("retry", "requeue a failed or cancelled job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")

    p = sub.add_parser("download", help="download a completed job's output")
    p.add_argument("job_id")
    p.add_argument("dest", type=Path)

    p = sub.add_parser("nodes", help="list farm nodes")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("node", help="remote control of a node")
    p.add_argument("action", choices=("drain", "pause", "resume"))
    p.add_argument("name")

    p = sub.add_parser("presets", help="list output presets")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("up", help="run a whole single-machine farm in the foreground until Ctrl-C")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1, help="jobs per node")

    p = sub.add_parser("demo", help="start a local farm, transcode a generated sample clip, print where it is")
    p.add_argument("--keep", action="store_true", help="leave the local farm's Redis running afterwards")

    for p in sub.choices.values():
        _settings_flags(p)
    return parser


def output_config_from_args(args: argparse.Namespace, presets: PresetStore, default_preset: str | None) -> OutputConfig:
    preset: str | None = args.preset or default_preset
    base = presets.get(preset) if preset else OutputConfig()
    return OutputConfig(
        resolution=args.resolution or base.resolution,
        format=args.format or base.format,
        include_audio=False if args.no_audio else base.include_audio,
        allow_upscale=args.upscale or base.allow_upscale,
    )
