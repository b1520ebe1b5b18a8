"""The queue payload: built by producers (``queue_payload``), validated again by nodes (never trusted).

``{"jobId": "...", "input": {"key": "inputs/<video id>/<name>", "name": "<original name>"},
"outputConfig": {"resolution": "720p", "format": "mp4", "includeAudio": true}}``; optional fields
may follow (``videoId``, ``priority``, ``submittedBy``), and fields no node reads are ignored.
See docs/queue-protocol.md, which lists the rules below.

Every field a node reads is checked here, before anything is downloaded: any BullMQ client can
write to the queue, and a value the database or storage would refuse (a NUL byte, a number out of
range, a string longer than its column) must fail the job at once as a bad payload, naming the
field, instead of being retried as if a service had failed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm.base.errors import FarmError
from farm.base.untrusted import shown
from farm.domain.jobspec import MAX_PRIORITY, JobSpecError, OutputConfig, validate_priority
from farm.domain.object_keys import MAX_ID_CHARS, InvalidKeyError, split_key, validate_id

MAX_NAME_CHARS = 1024  # input.name, as the Video row keeps it
MAX_SUBMITTED_BY_CHARS = 255
_INPUT_KEY = re.compile(rf"inputs/(?P<video>[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}})/[^/\\\x00]{{1,255}}")


class PayloadError(FarmError, ValueError):
    """A payload a node refuses. ``field`` names the part that is wrong (``input.name``, ``priority``)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class JobPayload:
    job_id: str
    input_key: str
    input_name: str
    config: OutputConfig
    video_id: str  # the <video id> of input.key, which videoId (when given) must equal
    priority: int = 0
    submitted_by: str = ""

    @classmethod
    def parse(cls, bull_job_id: Any, data: Any) -> JobPayload:
        """The payload of the BullMQ job ``bull_job_id``, or ``PayloadError`` naming a bad field."""
        data = _object(data)
        job_id = _job_id(bull_job_id, data)
        key = _input_key(data)
        return cls(
            job_id,
            key,
            _input_name(data, key),
            _config(data),
            _video_id(data, key),
            _priority(data),
            _submitted_by(data),
        )


def queue_payload(
    job_id: str,
    input_key: str,
    input_name: str,
    config: OutputConfig | Mapping[str, Any],
    *,
    video_id: str | None = None,
) -> dict[str, Any]:
    """The payload a producer enqueues for a recorded job (``videoId`` when ``video_id`` is given).

    ``config`` is the job's ``OutputConfig`` or its stored ``outputConfig``, which is read back
    through ``OutputConfig`` so that the queue only ever carries a complete, valid one.
    """
    if not isinstance(config, OutputConfig):
        config = OutputConfig.from_payload(config)
    payload: dict[str, Any] = {
        "jobId": job_id,
        "input": {"key": input_key, "name": input_name},
        "outputConfig": config.to_payload(),
    }
    if video_id is not None:
        payload["videoId"] = video_id
    return payload


def salvage(data: Any) -> dict[str, Any]:
    """What a refused payload holds that passed its own field's check, for the row that records
    the refusal: ``input_key``, ``input_name``, ``config``, ``priority``, ``submitted_by``, each only
    if valid. Nothing else of the payload is kept."""
    found: dict[str, Any] = {}
    if not isinstance(data, dict):
        return found
    readers = {"input_key": _input_key, "config": _config, "priority": _priority, "submitted_by": _submitted_by}
    for name, read in readers.items():
        try:
            found[name] = read(data)
        except PayloadError:
            pass
    if "input_key" in found:
        try:
            found["input_name"] = _input_name(data, found["input_key"])
        except PayloadError:
            found["input_name"] = found["input_key"].rsplit("/", 1)[-1]
    return found


# -- the fields, one check each ---------------------------------------------------------------


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError("payload", f"must be a JSON object, got {type(data).__name__}")
    return data


def _job_id(bull_job_id: Any, data: dict[str, Any]) -> str:
    """``jobId`` may be left out (the BullMQ id is used); both must follow the id rules."""
    job_id = _id(data.get("jobId", bull_job_id), "jobId")
    _id(bull_job_id, "jobId")  # the BullMQ id names work dirs and log lines too
    if job_id != bull_job_id:
        raise PayloadError("jobId", f"{shown(job_id)} does not match the BullMQ job id {shown(bull_job_id)}")
    return job_id


def _input_key(data: dict[str, Any]) -> str:
    source = data.get("input")
    if not isinstance(source, dict):
        raise PayloadError("input", "input must be an object with key and name")
    key = source.get("key")
    if not isinstance(key, str) or not _INPUT_KEY.fullmatch(key) or not _plain_key(key) or not _utf8(key):
        raise PayloadError("input.key", f"must look like inputs/<video id>/<name>, got {shown(key)}")
    return key


def _input_name(data: dict[str, Any], key: str) -> str:
    """The user's file name. Names may hold any character a file system allows except NUL (which
    PostgreSQL cannot store); whoever shows one escapes its control characters."""
    name = data["input"].get("name")
    if name is None:
        return key.rsplit("/", 1)[-1]
    if name == "":
        raise PayloadError("input.name", "must not be empty (leave it out to use the key's last part)")
    return _text(name, "input.name", MAX_NAME_CHARS, controls=True)


def _config(data: dict[str, Any]) -> OutputConfig:
    """Required: a missing outputConfig is a producer's mistake, not a wish for the defaults (its
    fields, though, have documented defaults)."""
    if "outputConfig" not in data:
        raise PayloadError(
            "outputConfig",
            "missing; give at least {} for the defaults (resolution 720p, format mp4, includeAudio true)",
        )
    try:
        return OutputConfig.from_payload(data["outputConfig"])
    except JobSpecError as exc:
        raise PayloadError("outputConfig", str(exc)) from None


def _video_id(data: dict[str, Any], key: str) -> str:
    """The video is the one input.key names; a videoId that names another is refused, so a job can
    never be attached to another video's row."""
    match = _INPUT_KEY.fullmatch(key)
    assert match is not None, "a key that _input_key accepted"
    from_key = match.group("video")
    if data.get("videoId") is None:
        return from_key
    given = _id(data["videoId"], "videoId")
    if given != from_key:
        raise PayloadError("videoId", f"{shown(given)} is not the video id in input.key ({shown(from_key)})")
    return given


def _priority(data: dict[str, Any]) -> int:
    priority = data.get("priority")
    if priority is None:
        return 0
    try:
        return validate_priority(priority)
    except JobSpecError:
        raise PayloadError(
            "priority", f"must be a whole number from 0 to {MAX_PRIORITY} (1 runs first), got {shown(priority)}"
        ) from None


def _submitted_by(data: dict[str, Any]) -> str:
    value = data.get("submittedBy")
    return "" if value is None else _text(value, "submittedBy", MAX_SUBMITTED_BY_CHARS, controls=False)


# -- rules shared by the fields -----------------------------------------------------------------


def _id(value: Any, field: str) -> str:
    try:
        return validate_id(value, field)
    except InvalidKeyError:
        raise PayloadError(
            field, f"must be 1 to {MAX_ID_CHARS} letters, digits, '-' or '_' (a UUID, say), got {shown(value)}"
        ) from None


def _text(value: Any, field: str, max_chars: int, *, controls: bool) -> str:
    """A string that every database stores as it is; ``controls``: whether control and invisible
    formatting characters (a newline, a right-to-left override) are allowed."""
    if not isinstance(value, str):
        raise PayloadError(field, f"must be a string, got {shown(value)}")
    if len(value) > max_chars:
        raise PayloadError(field, f"must be at most {max_chars} characters, got {len(value)}")
    if "\x00" in value or not _utf8(value):
        raise PayloadError(field, f"holds a NUL byte or a character that is not valid Unicode: {shown(value)}")
    if not controls and any(unicodedata.category(ch).startswith("C") for ch in value):
        raise PayloadError(field, f"must not hold control or formatting characters, got {shown(value)}")
    return value


def _utf8(text: str) -> bool:
    """Lone surrogates (JSON may carry ``"\\ud800"``) cannot be stored or sent anywhere."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_key(key: str) -> bool:
    """The storage backends' own rules (no ``..``, no control characters): a key they would refuse
    must fail the job at once as a bad payload, not be retried as if storage had failed."""
    try:
        split_key(key)
    except InvalidKeyError:
        return False
    return True
