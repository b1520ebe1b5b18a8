"""The node registry in Redis: which nodes are on the farm, what each is doing, remote control.

Python BullMQ workers do not show up in Node's worker list, so every farm node keeps its own
entry here. Nodes write through :class:`NodeRegistryWriter` (``redis.asyncio``); the CLI and the
desktop panel read and control through :class:`NodeRegistry` (sync ``redis.Redis``).

Key layout, all under ``encodeflow:<queue>:`` so that several farms can share one Redis:

``node:<name>`` (string)
    The node's :class:`NodeStatus` as JSON, written with a ``PX`` TTL (default 20 s, four
    publishes) that every heartbeat refreshes. A missing key means the node is offline.
``nodes`` (sorted set)
    Node name -> last seen, epoch milliseconds. Lets readers list a node as ``offline`` after its
    key expired. Writers prune entries older than 24 h; readers ignore them.
``node:<name>:samples`` (list)
    The last 600 samples ``{"t": epoch s, "cpu": percent, "mem": ratio}`` as JSON, oldest first
    (RPUSH + LTRIM in the same transaction as the status). Kept after the node goes offline, so
    its chart survives; the list expires 24 h after its last sample.
``node:<name>:control`` (string)
    The desired state set by remote control: ``run``, ``pause`` or ``drain``. No TTL; a missing
    key means ``run``. It survives a node restart, so a paused node comes back paused.

Pub/sub channel ``encodeflow:<queue>:control``: each change of a control key is announced as
``{"node": <name>, "state": <state>}`` so that the node reacts at once. Nodes also re-read their
control key on every heartbeat, so a missed message (listener reconnecting) costs one beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Awaitable, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

KEY_PREFIX = "encodeflow"
NODE_STATUSES = ("idle", "busy", "draining", "paused")
OFFLINE = "offline"  # never written by a node: what readers report once a node's key expired
DESIRED_STATES = ("run", "pause", "drain")
DEFAULT_TTL = 20.0  # nodes publish every 5 s (farm_node/heartbeat.py): three missed publishes
MAX_SAMPLES = 600  # 10 minutes at one sample a second
OFFLINE_RETENTION = 24 * 3600.0


class UnknownNodeError(LookupError):
    """No node of that name has been seen on this queue; the message lists the known ones."""


def check_node_name(name: str) -> str:
    """A node name becomes part of Redis keys, so ``:`` and whitespace would make them ambiguous."""
    if not name or any(c == ":" or c.isspace() for c in name):
        raise ValueError(f"node name must be non-empty, without ':' or spaces, got {name!r}")
    return name


@dataclass(frozen=True)
class RegistryKeys:
    """The Redis key names for one queue (see the module docstring)."""

    queue: str

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}:{self.queue}:"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def control_channel(self) -> str:
        return f"{self.prefix}control"

    def node(self, name: str) -> str:
        return f"{self.prefix}node:{name}"

    def samples(self, name: str) -> str:
        return f"{self.prefix}node:{name}:samples"

    def control(self, name: str) -> str:
        return f"{self.prefix}node:{name}:control"


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
    encoders: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    version: str = ""
    started_at: float = 0.0
    last_seen: float = 0.0
    metrics_url: str | None = None

    @property
    def online(self) -> bool:
        return self.status != OFFLINE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NodeStatus":
        # Unknown keys are dropped so that an older reader understands a newer node.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str | bytes) -> "NodeStatus":
        data = json.loads(text)
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"not a node status: {text!r:.200}")
        return cls.from_dict(data)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_desired(raw: str | bytes | None, name: str) -> str:
    if raw is None:
        return "run"
    state = _text(raw)
    if state not in DESIRED_STATES:
        log.warning("control key of node %s holds %r; treating it as 'run'", name, state)
        return "run"
    return state


def _ms(epoch_s: float) -> int:
    return round(epoch_s * 1000)


# -- writer side (the node, asyncio) -----------------------------------------------------------


class NodeRegistryWriter:
    """One node's entry in the registry, written by its heartbeat."""

    def __init__(self, redis: Any, queue: str, name: str, *, ttl: float = DEFAULT_TTL,
                 max_samples: int = MAX_SAMPLES, retention: float = OFFLINE_RETENTION) -> None:
        self.redis = redis  # a redis.asyncio.Redis
        self.queue = queue
        self.name = check_node_name(name)
        self.keys = RegistryKeys(queue)
        self.ttl = ttl
        self.max_samples = max_samples
        self.retention = retention

    async def publish(self, status: NodeStatus,
                      sample: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Write the status (refreshing its TTL) and append the sample(s), in one transaction."""
        if status.name != self.name:
            raise ValueError(f"status of node {status.name!r} given to the writer of {self.name!r}")
        now = status.last_seen or time.time()
        samples_key = self.keys.samples(self.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.node(self.name), status.to_json(), px=max(1, _ms(self.ttl)))
            pipe.zadd(self.keys.nodes, {self.name: _ms(now)})
            pipe.zremrangebyscore(self.keys.nodes, "-inf", f"({_ms(now - self.retention)}")
            samples = [sample] if isinstance(sample, Mapping) else list(sample or [])
            if samples:
                pipe.rpush(samples_key, *(json.dumps(dict(s), separators=(",", ":")) for s in samples))
                pipe.ltrim(samples_key, -self.max_samples, -1)
                pipe.expire(samples_key, math.ceil(self.retention))
            await pipe.execute()

    async def remove(self) -> None:
        """On a clean shutdown: drop the live key and mark the node offline now; keep samples."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.node(self.name))
            pipe.zadd(self.keys.nodes, {self.name: _ms(time.time())})
            await pipe.execute()

    async def desired_state(self) -> str:
        """``run``, ``pause`` or ``drain``, as last set by remote control (``run`` if never set)."""
        return _parse_desired(await self.redis.get(self.keys.control(self.name)), self.name)


async def control_listener(redis: Any, queue: str, name: str,
                           on_change: Callable[[str], Awaitable[None] | None], *,
                           ready: asyncio.Event | None = None) -> None:
    """Call ``on_change(state)`` for each control announcement for node ``name``, until cancelled.

    ``on_change`` may be a function or a coroutine function. ``ready`` (an ``asyncio.Event``) is
    set once Redis has confirmed the subscription. Connection errors propagate: the caller
    restarts the listener when Redis is back, and re-reads the control key meanwhile.
    """
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(RegistryKeys(queue).control_channel)
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if message["type"] == "subscribe":
                if ready is not None:
                    ready.set()
                continue
            state = _announced_state(message, name)
            if state is not None:
                result = on_change(state)
                if inspect.isawaitable(result):
                    await result
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


def _announced_state(message: Mapping[str, Any], name: str) -> str | None:
    if message.get("type") != "message":
        return None
    try:
        data = json.loads(message["data"])
    except (TypeError, ValueError):
        log.debug("ignoring malformed control message %r", message.get("data"))
        return None
    if not isinstance(data, dict) or data.get("node") != name:
        return None
    state = data.get("state")
    return state if state in DESIRED_STATES else None


# -- reader / controller side (CLI, desktop app; sync) ---------------------------------------


RECENT_SAMPLES = 16  # what a once-a-second poller reads first


def _parse_samples(raw: list) -> list[dict[str, Any]]:
    samples = []
    for item in raw:
        try:
            samples.append(json.loads(item))
        except ValueError:
            continue
    return samples


class NodeRegistry:
    """Lists the farm's nodes and their samples, and sets their desired state."""

    def __init__(self, redis: Any, queue: str, *, retention: float = OFFLINE_RETENTION) -> None:
        self.redis = redis  # a sync redis.Redis
        self.queue = queue
        self.keys = RegistryKeys(queue)
        self.retention = retention

    def nodes(self) -> list[NodeStatus]:
        """Every node seen within ``retention``, by name; expired ones with status ``offline``."""
        cutoff = _ms(time.time() - self.retention)
        seen = self.redis.zrangebyscore(self.keys.nodes, cutoff, "+inf", withscores=True)
        if not seen:
            return []
        names = [_text(member) for member, _ in seen]
        raws = self.redis.mget([self.keys.node(name) for name in names])
        statuses = [self._status(name, raw, score) for name, raw, (_, score) in zip(names, raws, seen)]
        return sorted(statuses, key=lambda s: s.name)

    def node(self, name: str) -> NodeStatus | None:
        """The node's status (``offline`` if its key expired), or ``None`` if never seen."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.node(name))
            pipe.zscore(self.keys.nodes, name)
            raw, score = pipe.execute()
        if raw is None and (score is None or score < _ms(time.time() - self.retention)):
            return None
        return self._status(name, raw, score or 0.0)

    def samples(self, name: str, since: float | None = None) -> list[dict[str, Any]]:
        """The node's samples, oldest first; with ``since``, only those taken after it (epoch s).

        A poller asks every second for what is new, which is a handful of samples: read the tail
        of the list first, and the whole list only when the tail does not reach back to ``since``
        (parsing all 600 samples of 64 nodes each second cost the panel a tenth of a core).
        """
        key = self.keys.samples(name)
        raw = self.redis.lrange(key, -RECENT_SAMPLES, -1) if since is not None else []
        parsed = _parse_samples(raw)
        if since is None or not parsed or parsed[0].get("t", 0) > since and len(raw) == RECENT_SAMPLES:
            parsed = _parse_samples(self.redis.lrange(key, 0, -1))
        return [s for s in parsed if since is None or s.get("t", 0) > since]

    def desired_state(self, name: str) -> str:
        return _parse_desired(self.redis.get(self.keys.control(name)), name)

    def set_desired_state(self, name: str, state: str) -> None:
        """Ask node ``name`` to ``run``, ``pause`` or ``drain``; it reacts within a heartbeat."""
        if state not in DESIRED_STATES:
            raise ValueError(f"unknown node state {state!r}; choose one of {', '.join(DESIRED_STATES)}")
        if not self._known(name):
            raise UnknownNodeError(self._unknown_message(name))
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.control(name), state)
            pipe.publish(self.keys.control_channel, json.dumps({"node": name, "state": state}))
            pipe.execute()

    def forget(self, name: str) -> bool:
        """Remove every trace of the node (a live node re-registers on its next heartbeat)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.node(name), self.keys.samples(name), self.keys.control(name))
            pipe.zrem(self.keys.nodes, name)
            deleted, removed = pipe.execute()
        return bool(deleted or removed)

    # -- helpers -------------------------------------------------------------------------------
    def _status(self, name: str, raw: str | bytes | None, score: float) -> NodeStatus:
        if raw is not None:
            try:
                return NodeStatus.from_json(raw)
            except ValueError:
                log.warning("node key of %s holds invalid JSON; listing it as offline", name)
        return NodeStatus(name=name, status=OFFLINE, last_seen=score / 1000)

    def _known(self, name: str) -> bool:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.keys.nodes, name)
            pipe.exists(self.keys.node(name))
            score, exists = pipe.execute()
        return score is not None or bool(exists)

    def _unknown_message(self, name: str) -> str:
        known = [f"{n.name} ({n.status})" for n in self.nodes()]
        if not known:
            return (f"no node named {name!r} has been seen on queue {self.queue!r}, and no node at all; "
                    f"is a farm node running with ENCODEFLOW_QUEUE={self.queue}?")
        return f"no node named {name!r} has been seen on queue {self.queue!r}; known nodes: {', '.join(known)}"
