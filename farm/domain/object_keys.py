"""Object keys: where inputs and outputs live in storage, and the rules that keep keys safe.

Every key is built here, so the layout is written down once:

- ``inputs/<video id>/<sanitised file name>``: what an editor uploaded;
- ``outputs/<job id>/attempt-<n>/<sanitised file name>``: what one run of a job made. A key per
  attempt means a repeated run (a node died, BullMQ handed the job to another) never overwrites
  or half-writes another run's result.

Names come from users and keys from the queue, which any BullMQ client can write to, so neither is
trusted: ``sanitize_name`` turns a user's file name into one harmless path component, and
``join_key`` refuses any key that could step outside a backend's root.
"""

from __future__ import annotations

import re
import unicodedata

from farm.base.errors import FarmError
from farm.base.untrusted import shown

MAX_NAME_BYTES = 150
FALLBACK_NAME = "file"
_MAX_EXTENSION_BYTES = 16
MAX_ID_CHARS = 64  # a UUID is 36
_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}}")
_PUNCTUATION = frozenset("._-")
# Names Windows reserves for devices, whatever the extension; a NAS share may be served from Windows.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)


class InvalidKeyError(FarmError, ValueError):
    """A storage key or id is malformed or would escape its prefix; the message says which and why."""


def sanitize_name(name: str) -> str:
    """One safe path component from a user's file name, keeping it recognisable.

    ``"../../Clips/My Film (final).MOV"`` becomes ``"My_Film_final.MOV"``. The result is never
    empty, never hidden (no leading ``.``), never read as an option by FFmpeg (no leading ``-``),
    holds only letters, digits, combining marks, ``.``, ``-`` and ``_``, and is at most
    ``MAX_NAME_BYTES`` bytes of UTF-8. Sanitising a sanitised name changes nothing.
    """
    text = unicodedata.normalize("NFC", str(name))
    base = next((part for part in reversed(re.split(r"[/\\]", text)) if part), "")
    cleaned = _tidy(_cap(_tidy("".join(ch if _allowed(ch) else "_" for ch in base))))
    if cleaned.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        cleaned = _tidy(_cap(f"{FALLBACK_NAME}_{cleaned}"))
    return cleaned or FALLBACK_NAME


def _allowed(ch: str) -> bool:
    if ch in _PUNCTUATION:
        return True
    category = unicodedata.category(ch)
    # Letters, decimal digits and the combining marks that many scripts need to spell a word.
    return category[0] == "L" or category in ("Nd", "Mn", "Mc")


def _tidy(name: str) -> str:
    """Collapse runs, drop stray ``_`` at the ends and before a dot, and unsafe leading characters."""
    while True:
        before = name
        name = re.sub(r"_+\.", ".", re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", name)))
        # Leading dots hide a file, a leading dash reads as an option; Windows drops trailing dots.
        name = name.strip("_").lstrip(".-").rstrip(".")
        if name == before:
            return name


def _cap(name: str) -> str:
    """Shorten to ``MAX_NAME_BYTES`` of UTF-8, keeping a short extension such as ``.mp4``."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension.encode()) > _MAX_EXTENSION_BYTES:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    return _cut(stem, budget).rstrip(".") + suffix


def _cut(text: str, max_bytes: int) -> str:
    """``text`` shortened to ``max_bytes`` of UTF-8 on a character boundary."""
    text = text.encode()[:max_bytes].decode(errors="ignore")
    # A combining mark left at the cut belongs to a letter that is gone.
    while text and unicodedata.category(text[-1]) in ("Mn", "Mc"):
        text = text[:-1]
    return text


def validate_id(value: str, what: str = "id") -> str:
    """An id that may appear in a key or a path: 1 to 64 of ``A-Z a-z 0-9 _ -`` (a UUID fits), so
    never ``..``, a separator or a control character."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidKeyError(
            f"{what} must be 1 to {MAX_ID_CHARS} letters, digits, '_' or '-' (a UUID, say), got {shown(value)}"
        )
    return value


def input_key(video_id: str, name: str) -> str:
    """``inputs/<video id>/<sanitised name>``: where an uploaded source file is kept."""
    return f"inputs/{validate_id(video_id, 'video id')}/{sanitize_name(name)}"


def output_key(job_id: str, attempt: int, filename: str) -> str:
    """``outputs/<job id>/attempt-<n>/<sanitised filename>``: one run's result, never shared."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise InvalidKeyError(f"attempt must be a whole number of at least 0, got {attempt!r}")
    return f"outputs/{validate_id(job_id, 'job id')}/attempt-{attempt}/{sanitize_name(filename)}"


def output_filename(input_name: str, output_name: str) -> str:
    """``<input stem>-<output name>`` (``Interview-720p.mp4``), as one safe name.

    The input's stem is shortened first, so a long input name loses the end of its stem, never the
    ``-720p.mp4`` that tells one job's outputs from another's.
    """
    tail = "-" + sanitize_name(output_name)
    stem = sanitize_name(input_name).rsplit(".", 1)[0]
    budget = MAX_NAME_BYTES - len(tail.encode())
    stem = _tidy(_cut(stem, budget))
    return sanitize_name(f"{stem or FALLBACK_NAME}{tail}")


def output_prefix(job_id: str) -> str:
    """The prefix that holds every attempt's outputs of a job (for listing or deleting them)."""
    return f"outputs/{validate_id(job_id, 'job id')}"


def split_key(key: str) -> list[str]:
    """The parts of a relative key, refusing anything that is not a plain ``a/b/c`` path."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"a storage key must be a non-empty string, got {shown(key)}")
    if key.startswith("/"):
        raise InvalidKeyError(f"storage key {shown(key)} is absolute; keys are relative, like 'inputs/<id>/<name>'")
    if "\\" in key:
        raise InvalidKeyError(f"storage key {shown(key)} contains a backslash; separate parts with '/'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise InvalidKeyError(f"storage key {shown(key)} contains a control character")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKeyError(
                f"storage key {shown(key)} has an empty, '.' or '..' part; it must stay inside its prefix"
            )
    return parts


def join_key(prefix: str, key: str) -> str:
    """``prefix/key`` for a backend whose objects live under ``prefix`` (``""`` for the root).

    The key must be relative and plain (see ``split_key``), so the result always lies inside the
    prefix. Slashes around the prefix are normalised away.
    """
    parts = split_key(key)
    prefix = normalize_prefix(prefix)
    return "/".join([prefix, *parts]) if prefix else "/".join(parts)


def normalize_prefix(prefix: str) -> str:
    """A prefix without surrounding slashes; ``""`` is the root. Its parts follow the key rules."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"a storage prefix must be a string, got {shown(prefix)}")
    stripped = prefix.strip("/")
    if stripped:
        split_key(stripped)
    return stripped
