"""The Redis key names are a wire contract (docs/queue-protocol.md): Node producers and other nodes
use the same ones, so each is pinned here, character for character."""

from bullmq.queue_keys import QueueKeys

from farm.domain.keyspace import Keyspace


def test_the_farm_keys_of_a_queue():
    keys = Keyspace("farm-a")
    assert keys.prefix == "encodeflow:farm-a:"
    assert keys.cancel("j1") == "encodeflow:farm-a:cancel:j1"
    assert keys.cancel_channel == "encodeflow:farm-a:cancel"
    assert keys.changing("j1") == "encodeflow:farm-a:changing:j1"
    assert keys.reconcile_lock == "encodeflow:farm-a:reconcile:lock"
    assert keys.no_room("j1") == "encodeflow:farm-a:no-room:j1"
    assert keys.nodes == "encodeflow:farm-a:nodes"
    assert keys.control_channel == "encodeflow:farm-a:control"
    assert keys.node("n1") == "encodeflow:farm-a:node:n1"
    assert keys.samples("n1") == "encodeflow:farm-a:node:n1:samples"
    assert keys.control("n1") == "encodeflow:farm-a:node:n1:control"
    assert keys.claim("n1") == "encodeflow:farm-a:node:n1:claim"


def test_the_bullmq_keys_of_a_queue_are_bullmqs_own():
    keys, bullmq = Keyspace("farm-a"), QueueKeys("bull").getKeys("farm-a")
    assert keys.bull_prefix == bullmq[""] == "bull:farm-a:"
    assert keys.job("j1") == "bull:farm-a:j1"
    assert keys.job_lock("j1") == "bull:farm-a:j1:lock"
    assert (
        (keys.delayed, keys.failed, keys.events, keys.marker)
        == (bullmq["delayed"], bullmq["failed"], bullmq["events"], bullmq["marker"])
        == ("bull:farm-a:delayed", "bull:farm-a:failed", "bull:farm-a:events", "bull:farm-a:marker")
    )
