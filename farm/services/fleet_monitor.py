"""The fleet as a panel watches it: the nodes, their new samples and the queue's counts, polled.

One ``FarmMonitor`` per polling thread (the panel's ``FarmPollThread``); ``Farm.monitor()`` makes one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import redis

from farm.domain.nodes import NodeStatus, Sample
from farm.services.queue import QueueClient
from farm.services.registry import NodeRegistry


@dataclass(frozen=True)
class FarmSnapshot:
    nodes: list[NodeStatus]
    fresh_samples: dict[str, list[Sample]]  # per node, the samples taken since the last poll
    counts: dict[str, int]  # the queue's jobs per state: waiting, active, delayed, failed, ...


class FarmMonitor:
    """The nodes, their new samples and the queue's counts, read on one thread again and again.

    It keeps its connections between polls; a poll that fails drops them and raises, and the next
    one connects again (to ``redis_url()`` as it is then). What each node's samples were read up to
    survives that, so no sample is handed out twice.
    """

    def __init__(self, redis_url: Callable[[], str], queue: str):
        self._redis_url = redis_url
        self._queue_name = queue
        self._loop = asyncio.new_event_loop()
        self._client: redis.Redis | None = None
        self._queue: QueueClient | None = None
        self._last_sample: dict[str, float] = {}

    def poll(self) -> FarmSnapshot:
        try:
            if self._client is None or self._queue is None:
                url = self._redis_url()
                self._client = redis.Redis.from_url(
                    url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3
                )
                self._queue = QueueClient(url, self._queue_name)
            registry = NodeRegistry(self._client, self._queue_name)
            nodes = registry.nodes()
            fresh = {}
            for node in nodes:
                samples = registry.samples(node.name, since=self._last_sample.get(node.name))
                if samples:
                    self._last_sample[node.name] = samples[-1]["t"]
                    fresh[node.name] = samples
            counts = self._loop.run_until_complete(self._queue.counts())
        except Exception:
            self._disconnect()
            raise
        return FarmSnapshot(nodes, fresh, counts)

    def close(self) -> None:
        self._disconnect()
        self._loop.close()

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._queue is not None:
            try:
                self._loop.run_until_complete(self._queue.close())
            except Exception:  # the connection is gone already: nothing to close cleanly
                pass
        self._client = self._queue = None
