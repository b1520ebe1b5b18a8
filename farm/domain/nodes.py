"""A farm node as its readers see it: its reported status, its name rules, what it may be asked to do.

Nodes publish a :class:`NodeStatus` with every heartbeat (``farm/services/registry.py`` stores it in
Redis); the CLI and the panel read it back and show it. Everything here is plain data, with no
Redis in it, so the panel can hold, draw and test it without a connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from farm.base.errors import EXIT_USAGE, FarmError
from farm.base.untrusted import shown

MAX_NODE_NAME = 64
_NODE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NODE_NAME - 1}}}")
NODE_STATUSES = ("idle", "busy", "draining", "paused", "disk full")
OFFLINE = "offline"  # never written by a node: what readers report once a node's key expired
DESIRED_STATES = ("run", "pause", "drain")
MAX_SAMPLES = 600  # 10 minutes at one sample a second
Sample = dict[str, Any]  # one CPU/memory sample of a node: {"t": epoch s, "cpu": percent, "mem": ratio}


class UnknownNodeError(FarmError, LookupError):
    """No node of that name has been seen on this queue; the message lists the known ones."""

    exit_code = EXIT_USAGE


def check_node_name(name: str) -> str:
    """A plain name: it becomes a folder (``<data dir>/work/<name>``), part of Redis keys, a metric
    label and an argument of ``encodeflow node``, so nothing that could leave a folder (``..``,
    ``/``), split a key (``:``), hide a file or read as an option (a leading ``.`` or ``-``)."""
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"node name {shown(name)} is not allowed: use 1 to {MAX_NODE_NAME} "
            "letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


@dataclass
class NodeStatus:
    """What a node reports about itself on every heartbeat.

    ``cpu`` is percent of the whole machine (0-100), ``memory`` the ratio (0-1) of system memory
    in use, ``rss`` the node process's resident bytes. ``running`` holds one
    ``{"jobId", "progress", "name"?}`` per job in hand. Times are epoch seconds.
    """

    name: str
    host: str = ""
    pid: int = 0
    status: str = "idle"
    cpu: float = 0.0
    memory: float = 0.0
    rss: int = 0
    concurrency: int = 1
    running: list[dict[str, Any]] = field(default_factory=list)
    ffmpeg_version: str = ""
    ffmpeg_path: str = ""
    encoders: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    version: str = ""
    started_at: float = 0.0
    last_seen: float = 0.0
    metrics_url: str | None = None
    reason: str = ""  # why the status is what it is, when that needs words ("disk full": how full)

    @property
    def online(self) -> bool:
        return self.status != OFFLINE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeStatus:
        # Unknown keys are dropped so that an older reader understands a newer node. Anyone who can
        # write to Redis can write here: a field of the wrong type is dropped (its default stands),
        # so that a reader (`encodeflow nodes`, the panel, the reconciler) never trips on it.
        kept: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = _field_value(f.name, data[f.name])
            if value is not _DROP:
                kept[f.name] = value
        if "name" not in kept:
            raise ValueError("not a node status: no name")
        return cls(**kept)

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeStatus:
        data = json.loads(text)
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"not a node status: {text!r:.200}")
        return cls.from_dict(data)


_DROP = object()
_TEXT_FIELDS = {"name", "host", "status", "ffmpeg_version", "ffmpeg_path", "version", "reason"}
_NUMBER_FIELDS = {"cpu", "memory", "started_at", "last_seen"}
_COUNT_FIELDS = {"pid", "rss", "concurrency"}


def _field_value(name: str, value: Any) -> Any:
    """``value`` for the NodeStatus field ``name`` if it has that field's type, else ``_DROP``."""
    if name in _TEXT_FIELDS:
        return value if isinstance(value, str) else _DROP
    if name in _NUMBER_FIELDS:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _DROP
    if name in _COUNT_FIELDS:
        return value if isinstance(value, int) and not isinstance(value, bool) else _DROP
    if name == "metrics_url":
        return value if value is None or isinstance(value, str) else _DROP
    if name in ("encoders", "tags"):
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else _DROP
    if name == "running":
        return [_running_entry(r) for r in value if isinstance(r, dict)] if isinstance(value, list) else _DROP
    return _DROP


def _running_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """One job in a node's hands, with the types its readers expect."""
    entry: dict[str, Any] = {"jobId": raw.get("jobId") if isinstance(raw.get("jobId"), str) else "?"}
    progress = raw.get("progress", 0)
    is_number = isinstance(progress, (int, float)) and not isinstance(progress, bool)
    entry["progress"] = float(progress) if is_number else 0.0
    if isinstance(raw.get("name"), str):
        entry["name"] = raw["name"]
    if isinstance(raw.get("attempt"), int) and not isinstance(raw.get("attempt"), bool):
        entry["attempt"] = raw["attempt"]
    return entry
