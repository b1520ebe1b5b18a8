"""The queue payload: built by producers, validated again by nodes (never trusted).

``{"jobId": "...", "input": {"key": "inputs/<video id>/<name>", "name": "<original name>"},
"outputConfig": {"resolution": "720p", "format": "mp4", "includeAudio": true}}``; more fields may
follow (``videoId``). See docs/queue-protocol.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from farm.jobspec import JobSpecError, OutputConfig
from farm.keys import InvalidKeyError, split_key

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INPUT_KEY = re.compile(r"^inputs/[A-Za-z0-9_-]{1,64}/[^/\\\x00]{1,255}$")


class PayloadError(ValueError):
    pass


def _plain_key(key: str) -> bool:
    """The storage backends' own rules (no ``..``, no control characters): a key they would refuse
    must fail the job at once as a bad payload, not be retried as if storage had failed."""
    try:
        split_key(key)
    except InvalidKeyError:
        return False
    return True


@dataclass(frozen=True)
class JobPayload:
    job_id: str
    input_key: str
    input_name: str
    config: OutputConfig
    raw: dict

    @classmethod
    def parse(cls, bull_job_id: str, data: Any) -> "JobPayload":
        if not isinstance(data, dict):
            raise PayloadError(f"payload must be an object, got {type(data).__name__}")
        job_id = data.get("jobId", bull_job_id)
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
            raise PayloadError(f"jobId must be 1-64 letters, digits, '-' or '_', got {job_id!r}")
        if job_id != bull_job_id:
            raise PayloadError(f"jobId {job_id!r} does not match the BullMQ job id {bull_job_id!r}")
        source = data.get("input")
        if not isinstance(source, dict):
            raise PayloadError("input must be an object with key and name")
        key, name = source.get("key"), source.get("name")
        if not isinstance(key, str) or not _INPUT_KEY.fullmatch(key) or not _plain_key(key):
            raise PayloadError(f"input.key must look like inputs/<video id>/<name>, got {key!r}")
        if name is None:
            name = key.rsplit("/", 1)[-1]
        if not isinstance(name, str) or not name or len(name) > 1024:
            raise PayloadError("input.name must be a non-empty string")
        try:
            config = OutputConfig.from_payload(data.get("outputConfig", {}))
        except JobSpecError as exc:
            raise PayloadError(str(exc)) from None
        return cls(job_id, key, name, config, dict(data))

    @staticmethod
    def build(job_id: str, input_key: str, input_name: str, config: OutputConfig, **extra: Any) -> dict:
        return {
            "jobId": job_id,
            "input": {"key": input_key, "name": input_name},
            "outputConfig": config.to_payload(),
            **extra,
        }
