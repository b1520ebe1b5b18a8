"""The test proxy itself: it forwards, cuts, stalls and comes back on the same port."""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults import FaultyLink


def test_the_link_forwards_cuts_stalls_and_restores(redis_server_url):
    target = redis.Redis.from_url(redis_server_url)
    host = target.connection_pool.connection_kwargs["host"]
    port = target.connection_pool.connection_kwargs["port"]
    with FaultyLink(host, port) as link:
        client = redis.Redis(
            host="127.0.0.1",
            port=link.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
            password=target.connection_pool.connection_kwargs.get("password"),
        )
        assert client.ping()
        first_port = link.port

        link.cut()
        try:
            client.ping()
            raise AssertionError("a cut link answered")
        except redis.ConnectionError:
            pass

        link.restore()
        assert link.port == first_port
        assert client.ping()

        link.stall()
        try:
            client.ping()
            raise AssertionError("a stalled link answered")
        except (redis.TimeoutError, redis.ConnectionError):
            pass
        link.restore()
        fresh = redis.Redis(
            host="127.0.0.1",
            port=link.port,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
            password=target.connection_pool.connection_kwargs.get("password"),
        )
        assert fresh.ping()
        assert link.accepted >= 3
