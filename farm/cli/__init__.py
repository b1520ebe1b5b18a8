"""The ``encodeflow`` command: submit and manage jobs, control nodes, run a local farm.

``parser`` defines the command line, ``commands`` does what each subcommand asks through the
``farm.client.Farm`` facade; this module parses, sets up logging and maps errors to exit codes.
"""

from __future__ import annotations

import logging
import sys

from farm.base.errors import FarmError
from farm.base.pipes import quiet_on_closed_pipe
from farm.base.settings import Settings
from farm.base.usage import UsageError
from farm.cli.parser import build_parser


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from farm.base import redact

    redact.install()  # no password or secret key in -v output
    from farm.cli import commands  # imported here so that --help and usage errors stay fast

    try:
        settings = Settings.load(
            flags={k: getattr(args, k, None) for k in ("data_dir", "redis_url", "database_url", "storage_url", "queue")}
        )
        return commands.run(args, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FarmError as exc:  # commands.run turns every error into one: its line and its exit code
        print(f"encodeflow {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
