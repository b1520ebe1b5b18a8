"""Command-line parsing that answers a wrong option in one line, for every EncodeFlow command.

argparse's own answer to a bad flag is its whole usage block (a dozen lines for ``farm-node``)
and then the error: in a service's journal, or a script's stderr, the line that matters is lost.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from farm.base.errors import EXIT_USAGE, FarmError


class UsageError(FarmError):
    """A wrong option or value: the command prints it in one line and exits 2."""

    exit_code = EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see --help)")
