"""Make the Job rows agree with BullMQ's own record of the jobs, after the faults no code of ours saw.

A node that dies (SIGKILL, power cut, reboot) runs no ``finally``: its job's row stays ``active``.
BullMQ notices through its stalled-job check and either hands the job to another node (whose
``mark_active`` fixes the row) or, once the job stalled more than ``maxStalledCount`` times, fails
it inside a Lua script, where nothing of ours runs. Redis may also lose jobs (a restart without
AOF, a ``FLUSHALL``). :class:`Reconciler` finds those rows and settles them:

===========================  ==========================  ===========================================
row                          BullMQ job                  the row becomes
===========================  ==========================  ===========================================
``active`` / ``queued``      ``failed``                  ``failed``, with BullMQ's reason (for stalls:
                                                         "the node running it stopped responding N
                                                         times; last node X")
``active`` / ``queued``      gone (in no state at all)   ``queued`` and the job is enqueued again
                                                         from the row, if its input is still in
                                                         storage; else ``failed`` ("lost from the
                                                         queue")
``active``                   back in ``wait`` (or        ``queued`` (waiting for another node),
                             delayed, prioritized)       unless the row's node is online and lists
                                                         the job as running
``completed``, ran twice+    (any)                       outputs of other runs under
                                                         ``outputs/<job id>/`` are deleted
===========================  ==========================  ===========================================

Every change is a conditional update: the row must still have the status and ``updated_at`` it had
when it was read, so a run, a cancel or a retry that moved the row meanwhile wins, and
``completed``/``cancelled`` rows are never touched. Rows changed within ``grace_s`` are left alone
(a job being submitted is in the database a moment before it is in the queue).

Nodes run a pass every ~30 s (``farm_node/reconcile_loop.py``); the CLI or the panel may call
:meth:`Reconciler.run_once` too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from bullmq import Job as BullJob

from farm.domain.nodes import NodeStatus
from farm.domain.object_keys import output_prefix
from farm.domain.payload import queue_payload
from farm.domain.status import OPEN_STATUSES, JobStatus
from farm.services.db import repo
from farm.services.db.engine import Database
from farm.services.db.models import Job, Video, utcnow
from farm.services.queue import QueueClient
from farm.services.storage.base import Storage

log = logging.getLogger(__name__)

GRACE_S = 10.0
BATCH = 500
SWEEP_WINDOW_S = 3600.0  # completed jobs that ran more than once are checked for stray outputs this long
STALLED_REASON = "job stalled more than allowable limit"  # BullMQ's words (moveStalledJobsToWait)
WAITING_STATES = ("waiting", "prioritized", "delayed", "paused")


@dataclass(frozen=True)
class Action:
    """One change a pass made: ``failed``, ``requeued``, ``queued`` or ``swept``."""

    job_id: str
    action: str
    detail: str


@dataclass(frozen=True)
class _Row:
    id: str
    status: str
    node: str | None
    attempts: int
    priority: int
    config: dict[str, Any]
    updated_at: datetime
    video_id: str
    video_key: str
    video_name: str


class Reconciler:
    def __init__(
        self,
        db: Database,
        queue: QueueClient,
        storage: Storage,
        *,
        grace_s: float = GRACE_S,
        batch: int = BATCH,
        sweep_window_s: float = SWEEP_WINDOW_S,
    ):
        self.db = db
        self.queue = queue
        self.storage = storage
        self.grace_s = grace_s
        self.batch = batch
        self.sweep_window_s = sweep_window_s

    # -- a whole pass -------------------------------------------------------------------------------
    async def run_once(self) -> list[Action]:
        """One pass over the unsettled rows (oldest change first) and recently completed ones."""
        actions: list[Action] = []
        cutoff = utcnow() - timedelta(seconds=self.grace_s)
        rows = await asyncio.to_thread(_open_rows, self.db, cutoff, self.batch)
        for start in range(0, len(rows), 100):
            actions += await self._check(rows[start : start + 100])
        actions += await self.sweep_outputs()
        for action in actions:
            log.warning("reconciled job %s: %s (%s)", action.job_id, action.action, action.detail)
        return actions

    async def settle_failed(self, job_id: str) -> Action | None:
        """Settle one job that BullMQ just failed without our processor (a stalled-too-often job)."""
        rows = await asyncio.to_thread(_rows_by_id, self.db, [job_id])
        if not rows:
            return None
        job = await self.queue.queue.getJob(job_id)
        if job is None or await self.queue.state(job_id) != "failed":
            return None
        action = await self._fail_from_queue(rows[0], job)
        if action:
            log.warning("reconciled job %s: %s (%s)", action.job_id, action.action, action.detail)
        return action

    async def _check(self, rows: list[_Row]) -> list[Action]:
        keys = self.queue.keys
        async with self.queue.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(keys.job(row.id))
                pipe.zscore(keys.failed, row.id)
            replies = await pipe.execute()
        actions = []
        for row, exists, failed_score in zip(rows, replies[0::2], replies[1::2], strict=True):
            try:
                action = await self._check_one(row, bool(exists), failed_score is not None)
            except Exception as exc:  # one odd job must not stop the pass
                log.warning("could not reconcile job %s: %s", row.id, exc)
                continue
            if action is not None:
                actions.append(action)
        return actions

    async def _check_one(self, row: _Row, exists: bool, failed: bool) -> Action | None:
        if failed:
            job = await self.queue.queue.getJob(row.id)
            return await self._fail_from_queue(row, job) if job is not None else None
        if not exists:
            if await self.queue.state(row.id) != "unknown":  # added back meanwhile
                return None
            return await self._lost(row)
        if row.status == JobStatus.ACTIVE.value:
            state = await self.queue.state(row.id)
            if state in WAITING_STATES and not await self._node_runs(row.node, row.id):
                detail = (
                    f"node {row.node} stopped responding; waiting for another node"
                    if row.node
                    else "waiting for a node"
                )
                ok = await asyncio.to_thread(
                    _settle,
                    self.db,
                    row,
                    status=JobStatus.QUEUED.value,
                    error=detail,
                    progress=0.0,
                    node=None,
                    finished_at=None,
                )
                return Action(row.id, JobStatus.QUEUED.value, detail) if ok else None
        return None

    # -- the three fixes ------------------------------------------------------------------------------
    async def _fail_from_queue(self, row: _Row, job: BullJob) -> Action | None:
        reason = (job.failedReason or "").strip() or "failed in the queue"
        stalls = int(getattr(job, "stalledCounter", 0) or 0)
        runs = int(job.attemptsMade or 0) + stalls  # runs that ended, and runs whose node died
        if reason == STALLED_REASON:
            times = "once" if stalls == 1 else f"{stalls} times"
            reason = f"the node running it stopped responding {times}"
            if row.node:
                reason += f"; last node {row.node}"
            runs -= 1  # BullMQ counted the failing itself as an attempt: a node took it only to fail it
        ok = await asyncio.to_thread(
            _settle,
            self.db,
            row,
            status=JobStatus.FAILED.value,
            error=reason,
            finished_at=utcnow(),
            attempts=max(row.attempts, runs),
        )
        return Action(row.id, JobStatus.FAILED.value, reason) if ok else None

    async def _lost(self, row: _Row) -> Action | None:
        """The queue has no trace of the job: enqueue it again if it can still run, else fail it."""
        has_input = await asyncio.to_thread(self.storage.exists, row.video_key)
        if not has_input:
            reason = "lost from the queue (Redis data loss?), and its input is no longer in storage"
            ok = await asyncio.to_thread(
                _settle, self.db, row, status=JobStatus.FAILED.value, error=reason, finished_at=utcnow()
            )
            return Action(row.id, JobStatus.FAILED.value, reason) if ok else None
        payload = queue_payload(row.id, row.video_key, row.video_name, row.config, video_id=row.video_id)
        note = "re-queued: the job was lost from the queue (Redis data loss?)"
        # The row first, conditionally: if anyone changed it meanwhile, leave the queue alone too.
        ok = await asyncio.to_thread(
            _settle, self.db, row, status=JobStatus.QUEUED.value, error=note, progress=0.0, node=None, finished_at=None
        )
        if not ok:
            return None
        await self.queue.enqueue(row.id, payload, priority=row.priority)
        return Action(row.id, "requeued", note)

    async def sweep_outputs(self) -> list[Action]:
        """Delete what runs that lost left under ``outputs/<job id>/`` of recently completed jobs.

        A run that died after its upload but before it could settle the row (or delete its output
        on losing) leaves an object no row refers to. Only jobs that ran more than once can have one.
        """
        since = utcnow() - timedelta(seconds=self.sweep_window_s)
        done = await asyncio.to_thread(_completed_reruns, self.db, since)
        actions = []
        for job_id, outputs in done:
            kept = {o.get("key") for o in outputs or [] if isinstance(o, dict)}
            if not kept:
                continue
            try:
                stray = await asyncio.to_thread(self._stray_outputs, job_id, kept)
                for key in stray:
                    await asyncio.to_thread(self.storage.delete, key)
                    actions.append(Action(job_id, "swept", f"deleted {key}, the output of a run that lost"))
            except Exception as exc:
                log.warning("could not sweep the outputs of job %s: %s", job_id, exc)
        return actions

    def _stray_outputs(self, job_id: str, kept: set[str | None]) -> list[str]:
        return [o.key for o in self.storage.list(output_prefix(job_id)) if o.key not in kept]

    async def _node_runs(self, node: str | None, job_id: str) -> bool:
        """Whether ``node`` is online and says it is running ``job_id`` (its last heartbeat)."""
        if not node:
            return False
        raw = await self.queue.redis.get(self.queue.keys.node(node))
        if raw is None:
            return False
        try:
            status = NodeStatus.from_json(raw)
        except (ValueError, TypeError):  # not a node's status: treat the node as gone
            return False
        return any(str(job.get("jobId")) == job_id for job in status.running if isinstance(job, dict))


# -- the database side ------------------------------------------------------------------------------


def _select_rows() -> sa.Select[Any]:
    return sa.select(
        Job.id,
        Job.status,
        Job.node,
        Job.attempts,
        Job.priority,
        Job.config,
        Job.updated_at,
        Video.id,
        Video.key,
        Video.name,
    ).join(Video, Job.video_id == Video.id)


def _open_rows(db: Database, changed_before: datetime, limit: int) -> list[_Row]:
    query = (
        _select_rows()
        .where(Job.status.in_(OPEN_STATUSES), Job.updated_at < changed_before)
        .order_by(Job.updated_at)
        .limit(limit)
    )
    with db.session(read_only=True) as session:
        return [_Row(*values) for values in session.execute(query).tuples()]


def _rows_by_id(db: Database, ids: list[str]) -> list[_Row]:
    query = _select_rows().where(Job.id.in_(ids), Job.status.in_(OPEN_STATUSES))
    with db.session(read_only=True) as session:
        return [_Row(*values) for values in session.execute(query).tuples()]


def _completed_reruns(db: Database, since: datetime) -> list[tuple[str, list[Any]]]:
    query = sa.select(Job.id, Job.outputs).where(
        Job.status == JobStatus.COMPLETED.value, Job.attempts > 1, Job.finished_at >= since
    )
    with db.session(read_only=True) as session:
        return [(job_id, outputs) for job_id, outputs in session.execute(query).tuples()]


def _settle(db: Database, row: _Row, **values: Any) -> bool:
    """Change the row only if it is exactly as it was read: same status, same last change."""
    if "error" in values:  # BullMQ's failedReason is written by whichever worker failed the job
        values["error"] = repo.error_text(values["error"])
    with db.session() as session:
        return repo.update_where(session, row.id, Job.status == row.status, Job.updated_at == row.updated_at, **values)
