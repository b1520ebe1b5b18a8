"""Every Redis key and channel name of one farm queue: BullMQ's and the farm's own.

The names are part of the wire contract (docs/queue-protocol.md): Node producers, other BullMQ
clients and older nodes read and write the same keys, so a name never changes here alone.

BullMQ keeps a queue's keys under ``bull:<queue>:`` (its default prefix, which the farm never
changes). The farm's own keys live under ``encodeflow:<queue>:``, so that several farms can share
one Redis. What each key holds is told where it is written: cancel requests and the change lock in
``farm/services/queue.py``, the node registry in ``farm/services/registry.py``, the reconcile turn in
``farm_node/reconcile_loop.py``, the no-room set in ``farm_node/disk_guard.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

BULL_PREFIX = "bull"
FARM_PREFIX = "encodeflow"


@dataclass(frozen=True)
class Keyspace:
    """The key names for one queue."""

    queue: str

    # -- BullMQ's ------------------------------------------------------------------------------
    @property
    def bull_prefix(self) -> str:
        return f"{BULL_PREFIX}:{self.queue}:"

    def job(self, job_id: str) -> str:
        """The job's hash (its data, options, state fields)."""
        return f"{self.bull_prefix}{job_id}"

    def job_lock(self, job_id: str) -> str:
        """The token of the run that holds the job."""
        return f"{self.job(job_id)}:lock"

    @property
    def delayed(self) -> str:
        return f"{self.bull_prefix}delayed"

    @property
    def failed(self) -> str:
        return f"{self.bull_prefix}failed"

    @property
    def events(self) -> str:
        """The stream of job events (added, active, progress, completed, failed, ...)."""
        return f"{self.bull_prefix}events"

    @property
    def marker(self) -> str:
        """What an idle BullMQ worker blocks on until a job is ready."""
        return f"{self.bull_prefix}marker"

    # -- the farm's own ------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"{FARM_PREFIX}:{self.queue}:"

    def cancel(self, job_id: str) -> str:
        """Set while a cancel of the job is requested."""
        return f"{self.prefix}cancel:{job_id}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub: the id of each job whose cancel was requested while it ran."""
        return f"{self.prefix}cancel"

    def changing(self, job_id: str) -> str:
        """The job's change lock: one cancel or retry of it at a time."""
        return f"{self.prefix}changing:{job_id}"

    @property
    def reconcile_lock(self) -> str:
        """Held by the node whose reconcile pass runs in this interval."""
        return f"{self.prefix}reconcile:lock"

    def no_room(self, job_id: str) -> str:
        """The nodes that had no room in their work dir for the job."""
        return f"{self.prefix}no-room:{job_id}"

    @property
    def nodes(self) -> str:
        """Every node seen: name -> last seen."""
        return f"{self.prefix}nodes"

    @property
    def control_channel(self) -> str:
        """Pub/sub: each change of a node's desired state."""
        return f"{self.prefix}control"

    def node(self, name: str) -> str:
        """The node's status, while it is online."""
        return f"{self.prefix}node:{name}"

    def samples(self, name: str) -> str:
        return f"{self.node(name)}:samples"

    def control(self, name: str) -> str:
        return f"{self.node(name)}:control"

    def claim(self, name: str) -> str:
        return f"{self.node(name)}:claim"
