"""The panel through a Redis restart: the status goes red, then green, and job events flow again.

The real hub (its listener and poller threads) on the local farm's embedded Redis, which is shut
down (its AOF kept) and started again on the same port, as a reboot or a crash of the server would.
"""

from __future__ import annotations

import redis

from farm.domain.keyspace import Keyspace
from farm.services.embedded import ensure_embedded_redis


def test_the_hub_reconnects_after_the_embedded_redis_restarts(app_settings, embedded_redis, services, hub, qtbot):
    url = embedded_redis.url
    qtbot.waitUntil(lambda: hub.connections.get("redis", (False, ""))[0], timeout=15_000)
    events, reconnects = [], []
    hub.job_event.connect(events.append)
    hub.events_reconnected.connect(lambda: reconnects.append(1))
    stream = Keyspace(app_settings.queue).events
    redis.Redis.from_url(url).xadd(stream, {"event": "progress", "jobId": "before", "data": "10"})
    qtbot.waitUntil(lambda: [e.job_id for e in events] == ["before"], timeout=10_000)

    embedded_redis.stop()
    qtbot.waitUntil(lambda: hub.connections["redis"][0] is False, timeout=20_000)
    assert hub.connections["redis"][1], "the status bar says why Redis is red"

    again = ensure_embedded_redis(app_settings)
    try:
        assert again.url == url, "the embedded Redis came back where the panel looks for it"
        redis.Redis.from_url(url).xadd(stream, {"event": "completed", "jobId": "after", "returnvalue": "{}"})
        qtbot.waitUntil(lambda: hub.connections["redis"][0] is True, timeout=30_000)
        qtbot.waitUntil(lambda: [e.job_id for e in events] == ["before", "after"], timeout=30_000)
        assert reconnects, "the pages were told to reconcile from the database"
    finally:
        again.stop()
