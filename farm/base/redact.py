"""Keeping secrets out of what the farm prints: URLs with passwords, and known secret values.

The first line of defence is that messages are built from redacted URLs (``redact_url``) and never
quote a password. This module is the second: a logging filter that every entry point installs on
its handlers (``install``), which hides

* the credentials of any ``scheme://user:password@host`` in a log line or traceback, even when the
  URL is malformed (a password holding ``/`` or ``#`` that was not percent-encoded);
* the values of known secrets wherever they appear: the passwords in the farm's Redis and database
  URLs (registered by ``Settings.load``) and the S3 keys and session token from the environment,
  as boto3 reads them;

and keeps each message on one line of bounded length, whatever untrusted text it quotes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import unquote

from farm.base.untrusted import cut, printable

MASK = "***"
MAX_MESSAGE_CHARS = 4000  # a log message (not its traceback) longer than this is cut
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words in the log
# The key id is not a secret by AWS's rules, but it names an account: it stays out of logs too.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
URL_ENV_VARS = ("ENCODEFLOW_REDIS_URL", "ENCODEFLOW_DATABASE_URL")

# scheme://userinfo@ up to the last "@" before any white space or quote: a password may hold "@",
# "/" or ":" when it was not percent-encoded, and the last "@" is where the host begins.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>(?!/)[^\s'\"<>]*)@")
_USERNAME = re.compile(r"[A-Za-z0-9._~-]*")

_lock = threading.Lock()
_registered: set[str] = set()


def redact_url(url: str) -> str:
    """A URL (or any text) with the password of every ``scheme://user:password@`` hidden.

    ``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``; a user name without a
    password is kept; a user part that does not look like a plain name (``redis://:a/b@host``
    read as ``:a`` + ``/b``) is hidden whole.
    """
    return _CREDENTIALS.sub(_mask_userinfo, url)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group("userinfo").partition(":")
    if not colon:  # no password: a user name, or an "@" further on in a path or key
        return match.group()
    if not _USERNAME.fullmatch(user):  # the "user" is part of a password that was not encoded
        return f"{match.group('scheme')}{MASK}@"
    return f"{match.group('scheme')}{user}:{MASK}@"


def url_password(url: str | None) -> str | None:
    """The password part of a URL as written (up to its last ``@``), or ``None``."""
    if not url:
        return None
    match = _CREDENTIALS.search(url)
    if not match or ":" not in match.group("userinfo"):
        return None
    return match.group("userinfo").partition(":")[2] or None


def mask_password(text: str, password: str | None) -> str:
    """``text`` with ``password`` (as written in its URL and percent-decoded) replaced by ``***``.

    For a driver's own words about the URL it was given, which may quote its password back.
    """
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, MASK)
    return text


def register_secret(value: str | None) -> None:
    """Hide ``value`` (and its percent-decoded form) from every log line from now on."""
    for form in {value, unquote(value or "")}:
        if form and len(form) >= MIN_SECRET_LENGTH:
            with _lock:
                _registered.add(form)


def register_url(url: str | None) -> None:
    register_secret(url_password(url))


def known_secrets() -> set[str]:
    """The registered secrets plus those the environment holds right now."""
    found = set()
    for name in SECRET_ENV_VARS:
        found.add(os.environ.get(name, ""))
    for name in URL_ENV_VARS:
        password = url_password(os.environ.get(name))
        found |= {password or "", unquote(password or "")}
    with _lock:
        found |= _registered
    return {value for value in found if len(value) >= MIN_SECRET_LENGTH}


def redact_text(text: str) -> str:
    """``text`` with URL credentials and every known secret replaced by ``***``."""
    text = redact_url(text)
    for secret in sorted(known_secrets(), key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) with ``redact_text`` before it is written.

    The message is also made one line of bounded length (``printable``, ``MAX_MESSAGE_CHARS``):
    call sites show untrusted text with ``farm.base.untrusted.shown``, and this catches any that do
    not, so that no id or file name can forge a log line. Tracebacks keep their lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it would
            return True
        record.msg, record.args = cut(printable(redact_text(message)), MAX_MESSAGE_CHARS), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a ``RedactingFilter`` on every handler of ``logger`` (the root logger by default).

    Handler filters see the records of every logger that propagates to them, which logger
    filters would not. Call it after ``logging.basicConfig``.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
