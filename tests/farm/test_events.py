"""The job-event listener survives a Redis restart and resumes where it stopped."""

import threading
import time

import pytest
import redis

from farm.domain.keyspace import Keyspace
from farm.services.events import JobEventListener
from tests.faults import RestartableRedis


@pytest.fixture
def server(tmp_path):
    s = RestartableRedis(tmp_path)
    s.start()
    yield s
    s.close()


def _emit(url, queue, job_id, event="progress", **fields):
    redis.Redis.from_url(url).xadd(Keyspace(queue).events, {"event": event, "jobId": job_id, **fields})


def _collect(listener, seen, stop_after):
    for event in listener.events():
        seen.append(event)
        if len(seen) >= stop_after:
            listener.stop()


def test_listener_reconnects_after_a_restart_and_misses_nothing(server):
    reconnected = threading.Event()
    listener = JobEventListener(server.url, "q", block_ms=200, on_reconnect=reconnected.set, max_backoff=0.5)
    seen = []
    thread = threading.Thread(target=_collect, args=(listener, seen, 3), daemon=True)
    _emit(server.url, "q", "before-start", data="5")  # older than the listener: not delivered
    thread.start()
    time.sleep(0.5)
    _emit(server.url, "q", "a", data="10")
    time.sleep(0.5)

    server.stop()
    time.sleep(1.5)  # the listener keeps trying with backoff
    assert thread.is_alive(), "a Redis outage must not end the listener"
    server.start()
    _emit(server.url, "q", "b", data="50")
    _emit(server.url, "q", "c", event="completed", returnvalue='{"ok": true}')
    thread.join(15)
    listener.stop()

    assert [e.job_id for e in seen] == ["a", "b", "c"]
    assert seen[0].progress == 10.0 and seen[1].progress == 50.0
    assert seen[2].fields["returnvalue"] == {"ok": True}
    assert reconnected.is_set() and listener.reconnects == 1


def test_a_new_listener_resumes_from_the_last_id(server):
    first = JobEventListener(server.url, "q", last_id="0-0", block_ms=100)
    _emit(server.url, "q", "one")
    seen = []
    _collect(first, seen, 1)
    _emit(server.url, "q", "two")  # written while nobody listened
    _emit(server.url, "q", "three")
    resumed = JobEventListener(server.url, "q", last_id=first.last_id, block_ms=100)
    later = []
    _collect(resumed, later, 2)
    assert [e.job_id for e in seen + later] == ["one", "two", "three"]
