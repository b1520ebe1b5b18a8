"""Showing text that came from outside: what the queue, a file's name, FFmpeg or Redis handed us.

Anyone who can write to the queue or the node registry chooses that text. Printed as it is, a
newline in it forges a log line, an escape sequence drives the reader's terminal, and a 10 kB id
fills a screen. So every log line, message and table cell that shows such text goes through one
of these:

* ``printable(text)``: control and invisible formatting characters (a newline, ESC, a
  right-to-left override) written as Python escapes (``\\n``), everything else kept as it is;
* ``shown(value)``: the same, quoted as ``repr`` quotes it and cut to ``SHOWN_CHARS`` characters,
  for ids and values named in a message (``'abc\\ndef'``, ``'xxxx... (10240 characters)``).

Validating (refusing what is not allowed) is the job of the code that reads the input, such as
``farm.domain.payload``; these only make sure that whatever gets through is shown harmlessly.
"""

from __future__ import annotations

SHOWN_CHARS = 80  # enough for a UUID, a file name or the start of a sentence


def printable(text: str) -> str:
    """``text`` on one line, with each non-printable character written as its Python escape."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as a message may quote it: escaped like ``repr``, at most about ``limit``
    characters, with the full length said when it was cut."""
    if not isinstance(value, str):
        text = printable(repr(value)[: limit * 2])  # repr of a huge list is cut before it is escaped
        return text if len(text) <= limit else text[:limit] + "..."
    text = repr(value[:limit])
    if len(value) <= limit and len(text) <= limit + 2:
        return text
    # An escape is up to 10 characters (\U0001f600): cut what is shown, not only what is quoted.
    return f"{text[: limit + 1]}... ({len(value)} characters)"


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def storable(text: str) -> str:
    """``text`` that every database, JSON document and log can hold.

    A file name that is not valid UTF-8 (a Latin-1 ``café`` on Linux) reaches Python with each
    bad byte as a lone surrogate, which nothing can encode; each such byte becomes U+FFFD.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
