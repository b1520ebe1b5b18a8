"""A job-event listener on BullMQ's ``bull:<queue>:events`` stream that survives Redis restarts.

BullMQ's own ``QueueEvents`` gives up on the first connection error. This listener is synchronous
(the app runs it in a QThread, the CLI in its main thread), reconnects with exponential backoff,
and resumes from the last stream id it saw, so no event written while it was reconnecting is
missed (as long as the stream was not trimmed past it). Callers reconcile from the database after
a reconnect anyway, because a stream is not a source of truth.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from farm.base.backoff import Backoff
from farm.domain.keyspace import Keyspace

log = logging.getLogger(__name__)

# XREAD's reply: [(stream, [(entry id, {field: value}), ...])], empty when the block timed out.
_StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]]
# Fields that BullMQ's scripts JSON-encode inside an event entry.
_JSON_FIELDS = {"progress": "data", "completed": "returnvalue"}


@dataclass(frozen=True)
class JobEvent:
    event: str  # added, waiting, active, progress, completed, failed, removed, stalled, retries-exhausted, ...
    job_id: str | None
    stream_id: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        data = self.fields.get("data")
        if isinstance(data, (int, float)):
            return float(data)
        if isinstance(data, dict) and isinstance(data.get("percent"), (int, float)):
            return float(data["percent"])
        return None


class JobEventListener:
    """Iterate over job events: ``for event in listener.events(): ...``; ``stop()`` from any thread.

    ``on_reconnect`` is called after the connection came back, so the caller can reconcile state.
    """

    def __init__(
        self,
        redis_url: str,
        queue: str,
        *,
        last_id: str = "$",
        block_ms: int = 1000,
        on_reconnect: Callable[[], None] | None = None,
        max_backoff: float = 10.0,
    ):
        self.redis_url = redis_url
        self.key = Keyspace(queue).events
        self.last_id = last_id
        self.block_ms = block_ms
        self.on_reconnect = on_reconnect
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self.connected = False
        self.reconnects = 0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.redis_url,
            decode_responses=True,
            socket_connect_timeout=3,
            socket_timeout=self.block_ms / 1000 + 5,
        )

    def _resolve_start(self, client: redis.Redis) -> None:
        # "$" would skip events written between two reconnects; pin it to a real id once.
        if self.last_id == "$":
            info = client.xinfo_stream(self.key) if client.exists(self.key) else None
            self.last_id = info["last-generated-id"] if info else "0-0"

    def _reconnected(self) -> None:
        self.reconnects += 1
        log.info("job-event listener reconnected to Redis")
        if self.on_reconnect:
            self.on_reconnect()

    def events(self, *, yield_idle: bool = False) -> Iterator[JobEvent | None]:
        """Job events as they arrive; with ``yield_idle``, also ``None`` after each quiet block
        (and each failed reconnect), so a caller can check deadlines or a stop flag."""
        backoff = Backoff(first=0.2, cap=self.max_backoff)
        client: redis.Redis | None = None
        had_connection = False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._client()
                    client.ping()
                    self._resolve_start(client)
                    if had_connection:
                        self._reconnected()
                    self.connected, had_connection = True, True
                    backoff.reset()
                data = cast(_StreamReply, client.xread({self.key: self.last_id}, block=self.block_ms, count=500))
            except redis.RedisError as exc:
                if self.connected:
                    log.warning("job-event listener lost Redis (%s); reconnecting", type(exc).__name__)
                self.connected = False
                if client is not None:
                    client.close()
                    client = None
                self._stop.wait(backoff.next())
                if yield_idle:
                    yield None
                continue
            if not data and yield_idle:
                yield None
            for _stream, entries in data or []:
                for stream_id, fields in entries:
                    self.last_id = stream_id
                    yield _to_event(stream_id, dict(fields))
        if client is not None:
            client.close()


def _to_event(stream_id: str, fields: dict[str, Any]) -> JobEvent:
    event = fields.pop("event", "")
    json_field = _JSON_FIELDS.get(event)
    if json_field and json_field in fields:
        try:
            fields[json_field] = json.loads(fields[json_field])
        except (TypeError, ValueError):
            pass
    return JobEvent(event, fields.get("jobId"), stream_id, fields)
