"""The embedded Redis keeps its address across a stop and start, so clients holding it reconnect."""

from __future__ import annotations

import logging
import socket

import pytest
import redis

from farm.services.embedded import ensure_embedded_redis, running_embedded_redis


def _port(url: str) -> int:
    return redis.connection.parse_url(url)["port"]


@pytest.fixture
def embedded(settings):
    servers = []

    def start():
        server = ensure_embedded_redis(settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_restarted_embedded_redis_keeps_its_address_and_its_data(settings, embedded):
    first = embedded()
    # A client made before the stop, as a running node or the panel holds one.
    client = redis.Redis.from_url(first.url, socket_connect_timeout=2, decode_responses=True)
    client.set("job", "queued")
    first.stop()
    assert running_embedded_redis(settings) is None
    with pytest.raises(redis.ConnectionError):
        client.ping()

    second = embedded()
    assert second.pid != first.pid
    assert second.url == first.url  # same port and password
    assert client.get("job") == "queued"  # the old client got back in, and the AOF kept the key
    client.close()


def test_a_restarted_embedded_redis_moves_only_when_its_port_is_taken(settings, embedded, caplog):
    first = embedded()
    old_port = _port(first.url)
    first.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old server's TIME_WAIT
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        with caplog.at_level(logging.WARNING, logger="farm.services.embedded"):
            second = embedded()
    new_port = _port(second.url)
    assert new_port != old_port
    assert redis.Redis.from_url(second.url).ping()
    assert f"port {old_port} is taken" in caplog.text
    assert f"port {new_port} instead" in caplog.text
    assert "restart them" in caplog.text
    second.stop()
    # The new port is now the one kept.
    assert _port(embedded().url) == new_port
