"""The root of EncodeFlow's own errors: what went wrong, for a person, and how a command ends.

Every error the farm and the node raise on purpose is a ``FarmError``. Its message (``str(exc)``)
is one line written for the person who reads it: what went wrong and what to do, with no class
name and no traceback needed. Its ``exit_code`` is how a command ends when the error stops it:

- ``EXIT_USAGE`` (2): the input or the configuration is wrong (a bad flag or setting, an unknown
  job, a refused file); running the same command again cannot help. The node's service units do
  not restart a node that exits 2.
- ``EXIT_FAILURE`` (1): the work could not be done (a service down, a job in the wrong state);
  trying again later may help.

Subclasses keep the builtin base that callers catch them by (``ValueError``, ``LookupError``,
``RuntimeError``, ...) next to this one.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class FarmError(Exception):
    """An error EncodeFlow raises on purpose; its message is the one line a user reads."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


def describe(exc: BaseException) -> str:
    """One line for an error that was not written for a user: its type and the first line of its text."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text.splitlines()[0]}" if text else name
