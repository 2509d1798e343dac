"""A channel closed after its transport was detached (what Celery does on a lost broker
connection) leaves its unacknowledged messages in Redis instead of crashing the worker."""

from __future__ import annotations

import redis
from kombu import Connection, Exchange, Queue

from queue_app import broker_patch


def test_a_detached_channel_leaves_unacked_messages_for_the_visibility_timeout(
    redis_url: str,
) -> None:
    broker_patch.apply()
    broker_patch.apply()  # idempotent
    queue = Queue("patch-test", Exchange("patch-test"), "patch-test")
    with Connection(redis_url) as conn:
        conn.Producer().publish(
            {"n": 1}, exchange=queue.exchange, routing_key="patch-test", declare=[queue]
        )
        channel = conn.channel()
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        conn.transport.client = None  # what Connection.collect() leaves behind
        channel.close()  # unpatched: AttributeError 'NoneType' object has no attribute 'hostname'
    unacked = redis.Redis.from_url(redis_url).hlen("unacked")
    assert unacked == 1


def test_an_ack_after_the_transport_was_detached_leaves_the_message_unacked(
    redis_url: str,
) -> None:
    """A task that finishes while the connection is down acks into a detached transport."""
    broker_patch.apply()
    queue = Queue("patch-ack", Exchange("patch-ack"), "patch-ack")
    with Connection(redis_url) as conn:
        conn.Producer().publish(
            {"n": 2}, exchange=queue.exchange, routing_key="patch-ack", declare=[queue]
        )
        channel = conn.channel()
        message = queue(channel).get(no_ack=False)
        assert message is not None
        conn.transport.client = None
        message.ack()  # unpatched: AttributeError 'NoneType' object has no attribute 'client'
    assert redis.Redis.from_url(redis_url).hexists("unacked", message.delivery_tag)


def test_an_ack_after_the_channel_was_closed_leaves_the_message_unacked(redis_url: str) -> None:
    broker_patch.apply()
    queue = Queue("patch-closed", Exchange("patch-closed"), "patch-closed")
    with Connection(redis_url) as conn:
        conn.Producer().publish(
            {"n": 3}, exchange=queue.exchange, routing_key="patch-closed", declare=[queue]
        )
        channel = conn.channel()
        message = queue(channel).get(no_ack=False)
        assert message is not None
        conn.transport.client = None
        channel.close()  # the consumer closes it after a lost connection; the task still runs
        message.ack()  # unpatched: AttributeError 'NoneType' object has no attribute 'client'
    assert redis.Redis.from_url(redis_url).hexists("unacked", message.delivery_tag)
