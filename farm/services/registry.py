"""The node registry in Redis: which nodes are on the farm, what each is doing, remote control.

Python BullMQ workers do not show up in Node's worker list, so every farm node keeps its own
entry here. Nodes write through :class:`NodeRegistryWriter` (``redis.asyncio``); the CLI and the
desktop panel read and control through :class:`NodeRegistry` (sync ``redis.Redis``).

Keys (named by ``farm.domain.keyspace.Keyspace``), all under ``encodeflow:<queue>:`` so that several farms
can share one Redis:

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
``node:<name>:claim`` (string)
    ``{"host", "pid"}`` of the process that holds the name, taken with ``SET NX`` when a node
    starts (so of two nodes starting at once under one name only one runs), refreshed with the
    status key's TTL by every heartbeat, deleted on a clean exit. A claim whose process is gone
    (same host, pid dead or no farm node) is taken over, so a node killed outright restarts at once.

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
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from farm.base.settings import SettingsError
from farm.base.untrusted import shown
from farm.domain.defaults import NODE_STATUS_TTL_S
from farm.domain.keyspace import Keyspace
from farm.domain.nodes import (
    DESIRED_STATES,
    MAX_NODE_NAME,
    MAX_SAMPLES,
    OFFLINE,
    NodeStatus,
    UnknownNodeError,
    check_node_name,
)

log = logging.getLogger(__name__)

OFFLINE_RETENTION = 24 * 3600.0


def host_node_name(suffix: str = "") -> str:
    """This host's name made into a node name, with room for ``suffix`` (``-local-1``).

    The default node name; a host name is almost always one already, but Windows and a kernel
    allow more than a node name does, and a long one plus a suffix could pass the length limit.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip(".-") or "node"
    return check_node_name(host[: MAX_NODE_NAME - len(suffix)].rstrip(".-") + suffix)


# -- who holds a node name ----------------------------------------------------------------------


class NodeNameTaken(SettingsError):
    """A live node already runs under this name; the message names its host and pid."""

    def __init__(self, message: str, holder: NodeClaim):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class NodeClaim:
    """The process that holds a node name: written to the claim key, read from a status key."""

    host: str
    pid: int

    @classmethod
    def mine(cls) -> NodeClaim:
        return cls(socket.gethostname(), os.getpid())

    @classmethod
    def from_json(cls, text: str | bytes | None) -> NodeClaim | None:
        try:
            data = json.loads(text) if text is not None else None
            return cls(str(data["host"]), int(data["pid"])) if isinstance(data, dict) else None
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid}, separators=(",", ":"))

    def is_live(self) -> bool:
        """Whether the holder may still run. A claim from another host counts as live until its TTL
        ends (no one here can see that process); on this host, a dead pid, a pid that is no farm
        node any more, or our own pid (a container restarted with the same pid) is a previous run
        that died without releasing it."""
        if self.host != socket.gethostname():
            return True
        return self.pid != os.getpid() and is_node_process(self.pid)


def is_node_process(pid: int) -> bool:
    """Whether ``pid`` is a running ``farm-node`` (run as ``farm-node``, ``python -m farm_node``
    or a bundle's ``farm-node.exe``). A process we may not inspect counts as one: never mistake a
    live node for a dead one."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.AccessDenied:
        return True
    except psutil.Error:  # gone, or a zombie
        return False
    programs = {os.path.basename(arg).lower() for arg in cmdline[:2]}
    return bool(programs & {"farm-node", "farm-node.exe"}) or cmdline[1:3] == ["-m", "farm_node"]


def name_taken(name: str, holder: NodeClaim, expires_in: float | None = None) -> NodeNameTaken:
    where = (
        f"pid {holder.pid} on this host ({holder.host})"
        if holder.host == socket.gethostname()
        else f"pid {holder.pid} on host {holder.host}"
    )
    gone = (
        f" (if that node is gone, its claim expires within {math.ceil(expires_in)} s)"
        if expires_in and holder.host != socket.gethostname()
        else ""
    )
    return NodeNameTaken(
        f"a node named {name} is already running: {where}{gone}; give this node another --name, or stop that one first",
        holder,
    )


# Replace a claim only if it still holds what we read: two nodes taking over one dead claim at the
# same instant cannot both win.
_REPLACE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""
# Refresh our claim, or take it again if it expired (Redis restarted, a long outage); never
# overwrite another process's.
_REFRESH_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_desired(raw: str | bytes | None, name: str) -> str:
    if raw is None:
        return "run"
    state = _text(raw)
    if state not in DESIRED_STATES:
        log.warning("control key of node %s holds %s; treating it as 'run'", shown(name), shown(state))
        return "run"
    return state


def _ms(epoch_s: float) -> int:
    return round(epoch_s * 1000)


# -- writer side (the node, asyncio) -----------------------------------------------------------


class NodeRegistryWriter:
    """One node's entry in the registry, written by its heartbeat."""

    def __init__(
        self,
        redis: Any,
        queue: str,
        name: str,
        *,
        ttl: float = NODE_STATUS_TTL_S,
        max_samples: int = MAX_SAMPLES,
        retention: float = OFFLINE_RETENTION,
    ) -> None:
        self.redis = redis  # a redis.asyncio.Redis
        self.queue = queue
        self.name = check_node_name(name)
        self.keys = Keyspace(queue)
        self.ttl = ttl
        self.max_samples = max_samples
        self.retention = retention
        self.claimed: str | None = None  # our claim's value while we hold the name
        self._claim_lost = False

    async def claim(self) -> None:
        """Take the node's name for this process, or raise ``NodeNameTaken`` naming the live node
        that holds it. Atomic (``SET NX``), so of two nodes starting at once only one gets it; a
        claim left by a dead previous run on this host is taken over. Every ``publish`` refreshes
        the claim and ``release`` gives it up; a node killed outright loses it after the TTL."""
        key, mine, ttl = self.keys.claim(self.name), NodeClaim.mine().to_json(), max(1, _ms(self.ttl))
        for _ in range(5):
            if await self.redis.set(key, mine, nx=True, px=ttl):
                break
            held = await self.redis.get(key)
            if held is None:
                continue  # expired between the two calls
            holder = NodeClaim.from_json(held)
            if holder is not None and holder.is_live():
                raise name_taken(self.name, holder, await self.redis.pttl(key) / 1000)
            if await self.redis.eval(_REPLACE_CLAIM, 1, key, held, mine, ttl):
                log.info(
                    "node %s: took over the name from a previous run that is gone (%s)", self.name, shown(_text(held))
                )
                break
        else:
            raise RuntimeError(f"could not claim the node name {self.name}: other nodes keep taking it")
        self.claimed = mine
        await self._refuse_unclaimed_holder()

    async def _refuse_unclaimed_holder(self) -> None:
        """A node of an older version holds no claim; its status key names its host and pid."""
        try:
            status = NodeStatus.from_json(await self.redis.get(self.keys.node(self.name)) or "")
        except ValueError:
            return
        holder = NodeClaim(status.host, status.pid)
        if holder != NodeClaim.mine() and holder.is_live():
            await self.release()
            raise name_taken(self.name, holder, await self.redis.pttl(self.keys.node(self.name)) / 1000)

    async def release(self) -> None:
        """Give the name up (on a clean exit), if it is still ours."""
        if self.claimed is not None:
            await self.redis.eval(_RELEASE_CLAIM, 1, self.keys.claim(self.name), self.claimed)
            self.claimed = None

    async def publish(
        self, status: NodeStatus, sample: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Write the status (refreshing its TTL) and append the sample(s), in one transaction."""
        if status.name != self.name:
            raise ValueError(f"status of node {status.name!r} given to the writer of {self.name!r}")
        now = status.last_seen or time.time()
        samples_key = self.keys.samples(self.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            if self.claimed is not None:
                pipe.eval(_REFRESH_CLAIM, 1, self.keys.claim(self.name), self.claimed, max(1, _ms(self.ttl)))
            pipe.set(self.keys.node(self.name), status.to_json(), px=max(1, _ms(self.ttl)))
            pipe.zadd(self.keys.nodes, {self.name: _ms(now)})
            pipe.zremrangebyscore(self.keys.nodes, "-inf", f"({_ms(now - self.retention)}")
            samples = [sample] if isinstance(sample, Mapping) else list(sample or [])
            if samples:
                pipe.rpush(samples_key, *(json.dumps(dict(s), separators=(",", ":")) for s in samples))
                pipe.ltrim(samples_key, -self.max_samples, -1)
                pipe.expire(samples_key, math.ceil(self.retention))
            results = await pipe.execute()
        if self.claimed is not None:
            self._note_claim(bool(results[0]))

    def _note_claim(self, held: bool) -> None:
        """Say once when another process took our name (this node was frozen or cut off from Redis
        past the claim's TTL and a node of the same name started meanwhile), and once when it is ours again."""
        if held == self._claim_lost:
            self._claim_lost = not held
            if held:
                log.info("node %s: holds its name again", self.name)
            else:
                log.error(
                    "node %s: another node took this name while this one was unreachable; two "
                    "nodes now run as %s: stop one of them",
                    self.name,
                    self.name,
                )

    async def remove(self) -> None:
        """On a clean shutdown: drop the live key and mark the node offline now; keep samples."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.node(self.name))
            pipe.zadd(self.keys.nodes, {self.name: _ms(time.time())})
            await pipe.execute()

    async def desired_state(self) -> str:
        """``run``, ``pause`` or ``drain``, as last set by remote control (``run`` if never set)."""
        return _parse_desired(await self.redis.get(self.keys.control(self.name)), self.name)


async def control_listener(
    redis: Any,
    queue: str,
    name: str,
    on_change: Callable[[str], Awaitable[None] | None],
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Call ``on_change(state)`` for each control announcement for node ``name``, until cancelled.

    ``on_change`` may be a function or a coroutine function. ``ready`` (an ``asyncio.Event``) is
    set once Redis has confirmed the subscription. Connection errors propagate: the caller
    restarts the listener when Redis is back, and re-reads the control key meanwhile.
    """
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(Keyspace(queue).control_channel)
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
        log.debug("ignoring malformed control message %s", shown(message.get("data")))
        return None
    if not isinstance(data, dict) or data.get("node") != name:
        return None
    state = data.get("state")
    return state if state in DESIRED_STATES else None


# -- reader / controller side (CLI, desktop app; sync) ---------------------------------------


RECENT_SAMPLES = 16  # what a once-a-second poller reads first


def _parse_samples(raw: list[str]) -> list[dict[str, Any]]:
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
        self.keys = Keyspace(queue)
        self.retention = retention

    def nodes(self) -> list[NodeStatus]:
        """Every node seen within ``retention``, by name; expired ones with status ``offline``."""
        cutoff = _ms(time.time() - self.retention)
        seen = self.redis.zrangebyscore(self.keys.nodes, cutoff, "+inf", withscores=True)
        if not seen:
            return []
        names = [_text(member) for member, _ in seen]
        raws = self.redis.mget([self.keys.node(name) for name in names])
        statuses = [self._status(name, raw, score) for name, raw, (_, score) in zip(names, raws, seen, strict=True)]
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

    def name_holder(self, name: str) -> NodeClaim | None:
        """The live process that holds node name ``name``: a node starting under it is refused."""
        holder = NodeClaim.from_json(self.redis.get(self.keys.claim(name)))
        return holder if holder is not None and holder.is_live() else None

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
                log.warning("node key of %s holds invalid JSON; listing it as offline", shown(name))
        return NodeStatus(name=name, status=OFFLINE, last_seen=score / 1000)

    def _known(self, name: str) -> bool:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.keys.nodes, name)
            pipe.exists(self.keys.node(name))
            score, exists = pipe.execute()
        return score is not None or bool(exists)

    def _unknown_message(self, name: str) -> str:
        try:
            check_node_name(name)
        except ValueError as exc:
            return f"no such node: {exc}"
        known = [f"{n.name} ({n.status})" for n in self.nodes()]
        if not known:
            return (
                f"no node named {name!r} has been seen on queue {self.queue!r}, and no node at all; "
                f"is a farm node running with ENCODEFLOW_QUEUE={self.queue}?"
            )
        return f"no node named {name!r} has been seen on queue {self.queue!r}; known nodes: {', '.join(known)}"
