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
