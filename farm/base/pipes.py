"""Commands in a pipe: a reader that goes away early ends the command quietly, as with Unix tools.

``encodeflow jobs --json | head -1`` closes the pipe after one line. Python ignores SIGPIPE, so the
next write raised ``BrokenPipeError`` with a traceback, and the interpreter's last flush printed
another. ``cat`` or ``grep`` are killed by SIGPIPE instead: no words, and a shell reports status
141 (128 + 13), which ``set -o pipefail`` scripts know. A command's ``main`` wrapped in
``quiet_on_closed_pipe`` ends the same way, after its ``finally`` blocks ran (a local farm that
``encodeflow up`` started is still stopped). SIGPIPE is not restored for the whole run: it would
also kill the process on a write to a socket that a server reset.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

EXIT_CLOSED_PIPE = 128 + 13  # where there is no SIGPIPE (Windows): the status a shell shows for it


def quiet_on_closed_pipe(main: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            try:
                return main(*args, **kwargs)
            finally:
                # What is still buffered is written now, where a closed pipe can still be caught
                # (argparse's --help and --version exit through here too).
                sys.stdout.flush()
        except BrokenPipeError:
            _end_like_a_unix_tool()

    return wrapper


def _end_like_a_unix_tool() -> NoReturn:
    # Nothing more may reach the closed pipe, not even the interpreter's flush at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(EXIT_CLOSED_PIPE)
