"""Untrusted text is shown escaped and cut, and no log record can span lines, whatever it quotes."""

from __future__ import annotations

import io
import logging

from farm.base import redact
from farm.base.untrusted import printable, shown, storable


def test_shown_escapes_and_cuts():
    assert shown("job-1") == "'job-1'"
    assert shown("a\nINFO forged\x1b[2J\u202e") == "'a\\nINFO forged\\x1b[2J\\u202e'"
    long = shown("x" * 10_240)
    assert long.endswith("... (10240 characters)") and len(long) < 120
    assert len(shown(list(range(10_000)))) <= 83
    assert printable("Caf\u00e9 日本 line\nbreak\t") == "Caf\u00e9 日本 line\\nbreak\\t"


def test_storable_replaces_what_no_database_can_hold():
    assert storable("caf\udce9.mp4") == "caf\ufffd.mp4"  # a Latin-1 name as Linux hands it to Python
    assert storable("a\ud800b").encode()  # a surrogate that stands for no byte
    assert storable("plain é.mp4") == "plain é.mp4"


def test_a_log_record_is_one_line_of_bounded_length_whatever_it_quotes():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.untrusted")
    logger.addHandler(handler)
    redact.install(logger)
    try:
        logger.warning("job %s: starting", "evil\nINFO farm_node: job 1 completed")
        logger.warning("job %s: starting", "y" * 20_000)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "job evil\\nINFO farm_node: job 1 completed: starting"
    assert len(lines[1]) < redact.MAX_MESSAGE_CHARS + 40 and lines[1].endswith("(20014 characters)")
    assert lines[2] == "with a traceback" and lines[3].startswith("Traceback"), "tracebacks keep their lines"
