"""What a job makes: the output config (the queue payload's ``outputConfig``), named presets, validation.

A job carries a list of outputs; today each job has one video rendition, but every place that
stores or reports outputs (queue payload, ``Job.outputs`` in the database, job JSON) already uses a
list of ``{"name", "kind", "key", "size"}`` so that renditions, thumbnails or an HLS ladder can be
added later without a migration of the contract.

Validation runs where a config is made (CLI, app) and again on the node, because the queue payload
is never trusted: any BullMQ client can put anything on the queue.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from farm.base.errors import EXIT_USAGE, FarmError
from farm.base.untrusted import (  # configs come from the queue too: values are quoted escaped and cut
    cut,
    printable,
    shown,
)

RESOLUTIONS = {"1080p": 1080, "720p": 720, "480p": 480, "360p": 360}
FORMATS = {
    # format -> (container extension, video codec, audio codec) as a user sees them
    "mp4": ("mp4", "h264", "aac"),
    "webm": ("webm", "vp9", "opus"),
    "hevc": ("mp4", "hevc", "aac"),
}
MAX_PRIORITY = 2_097_152  # BullMQ's upper bound; 1 is the highest priority, as in BullMQ


class JobSpecError(FarmError, ValueError):
    """An output config or preset is invalid; the message names the field and the allowed values."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class OutputConfig:
    resolution: str = "720p"
    format: str = "mp4"
    include_audio: bool = True
    allow_upscale: bool = False

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise JobSpecError(f"unknown resolution {shown(self.resolution)}; choose one of {', '.join(RESOLUTIONS)}")
        if self.format not in FORMATS:
            raise JobSpecError(f"unknown format {shown(self.format)}; choose one of {', '.join(FORMATS)}")
        for name in ("include_audio", "allow_upscale"):
            if not isinstance(getattr(self, name), bool):
                raise JobSpecError(f"{_camel(name)} must be true or false, got {shown(getattr(self, name))}")

    @property
    def short_side(self) -> int:
        return RESOLUTIONS[self.resolution]

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def video_codec(self) -> str:
        return FORMATS[self.format][1]

    @property
    def audio_codec(self) -> str:
        return FORMATS[self.format][2]

    @property
    def output_name(self) -> str:
        """File name of the rendition inside the job's output prefix."""
        return f"{self.resolution}-{self.format}.{self.extension}"

    def to_payload(self) -> dict[str, Any]:
        """The queue/JSON form, camelCase as in the queue payload's ``outputConfig``."""
        data: dict[str, Any] = {
            "resolution": self.resolution,
            "format": self.format,
            "includeAudio": self.include_audio,
        }
        if self.allow_upscale:
            data["allowUpscale"] = True
        return data

    @classmethod
    def from_payload(cls, data: Any) -> OutputConfig:
        """Validate an untrusted ``outputConfig`` mapping (camelCase or snake_case keys)."""
        if not isinstance(data, Mapping):
            raise JobSpecError(f"outputConfig must be an object, got {type(data).__name__}")
        known = {"resolution", "format", "includeAudio", "include_audio", "allowUpscale", "allow_upscale"}
        unknown = set(data) - known
        if unknown:
            named = ", ".join(cut(printable(name), 40) for name in sorted(map(str, unknown))[:5])
            raise JobSpecError(
                f"unknown outputConfig field(s) {named}; known: resolution, format, includeAudio, allowUpscale"
            )
        kwargs: dict[str, Any] = {}
        for snake in ("resolution", "format", "include_audio", "allow_upscale"):
            camel = _camel(snake)
            if camel in data:
                kwargs[snake] = data[camel]
            elif snake in data:
                kwargs[snake] = data[snake]
        for name in ("resolution", "format"):
            if name in kwargs and not isinstance(kwargs[name], str):
                raise JobSpecError(f"{name} must be a string, got {shown(kwargs[name])}")
        return cls(**kwargs)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.title() for word in rest)


def validate_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise JobSpecError(f"priority must be a whole number, got {shown(priority)}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise JobSpecError(f"priority must be between 0 and {MAX_PRIORITY} (1 runs first), got {priority}")
    return priority


# -- presets -----------------------------------------------------------------------------------

BUILTIN_PRESETS: dict[str, OutputConfig] = {
    "1080p-mp4": OutputConfig("1080p", "mp4"),
    "720p-mp4": OutputConfig("720p", "mp4"),
    "480p-mp4": OutputConfig("480p", "mp4"),
    "360p-proxy": OutputConfig("360p", "mp4"),
    "720p-webm": OutputConfig("720p", "webm"),
    "1080p-hevc": OutputConfig("1080p", "hevc"),
    "720p-mp4-silent": OutputConfig("720p", "mp4", include_audio=False),
}


class PresetStore:
    """Built-in presets plus the user's own, kept in ``presets.toml`` under the data dir."""

    def __init__(self, path: Path):
        self.path = path

    def _user(self) -> dict[str, OutputConfig]:
        if not self.path.exists():
            return {}
        raw = tomllib.loads(self.path.read_text(encoding="utf-8"))
        return {name: OutputConfig.from_payload(cfg) for name, cfg in raw.items()}

    def all(self) -> dict[str, OutputConfig]:
        return {**BUILTIN_PRESETS, **self._user()}

    def get(self, name: str) -> OutputConfig:
        presets = self.all()
        if name not in presets:
            raise JobSpecError(f"unknown preset {name!r}; choose one of {', '.join(sorted(presets))}")
        return presets[name]

    def save(self, name: str, config: OutputConfig) -> None:
        name = name.strip()
        if not name or len(name) > 64:
            raise JobSpecError("a preset name must be 1 to 64 characters")
        if name in BUILTIN_PRESETS:
            raise JobSpecError(f"{name!r} is a built-in preset; pick another name")
        user = {n: c.to_payload() for n, c in self._user().items()}
        user[name] = config.to_payload()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(tomli_w.dumps(user), encoding="utf-8")

    def delete(self, name: str) -> None:
        user = {n: c.to_payload() for n, c in self._user().items() if n != name}
        self.path.write_text(tomli_w.dumps(user), encoding="utf-8")


def outputs_record(
    config: OutputConfig,
    key: str | None = None,
    size: int | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    """One entry of a job's ``outputs`` list. The output's own dimensions and length live in it, so
    whoever reads the row (a run that finds the job done by another, a client) has them too."""
    record: dict[str, Any] = {"name": config.output_name, "kind": "video", "key": key, "size": size}
    media = {"width": width, "height": height, "duration": duration}
    record.update({name: value for name, value in media.items() if value is not None})
    return record
