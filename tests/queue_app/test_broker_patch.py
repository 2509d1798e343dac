"""After a lost broker connection (Celery detaches the transport, then closes the channel), a
worker neither crashes restoring its unacknowledged messages nor acking a task that finished
meanwhile: the messages stay in Redis's unacked hash for the visibility timeout to restore."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message
from kombu.transport.virtual.base import Channel

from queue_app import broker_patch


@pytest.fixture(autouse=True)
def patched() -> None:
    broker_patch.apply()
    broker_patch.apply()  # idempotent


def unacked_message(conn: Connection, name: str) -> tuple[Channel, Message]:
    """A message published to queue `name` and received without an ack yet."""
    queue = Queue(name, Exchange(name), name)
    conn.Producer().publish(
        {"queue": name}, exchange=queue.exchange, routing_key=name, declare=[queue]
    )
    channel = conn.channel()
    message = queue(channel).get(no_ack=False)
    assert message is not None
    return channel, message


def in_unacked_hash(redis_url: str, message: Message) -> bool:
    return bool(redis.Redis.from_url(redis_url).hexists("unacked", message.delivery_tag))


def test_a_detached_channel_leaves_unacked_messages_for_the_visibility_timeout(
    redis_url: str,
) -> None:
    with Connection(redis_url) as conn:
        channel, message = unacked_message(conn, "patch-close")
        conn.transport.client = None  # what Connection.collect() leaves behind
        channel.close()  # unpatched: AttributeError 'NoneType' object has no attribute 'hostname'
    assert in_unacked_hash(redis_url, message)


def test_an_ack_after_the_transport_was_detached_leaves_the_message_unacked(
    redis_url: str,
) -> None:
    with Connection(redis_url) as conn:
        _, message = unacked_message(conn, "patch-ack")
        conn.transport.client = None
        message.ack()  # unpatched: AttributeError 'NoneType' object has no attribute 'client'
    assert in_unacked_hash(redis_url, message)


def test_an_ack_after_the_channel_was_closed_leaves_the_message_unacked(redis_url: str) -> None:
    with Connection(redis_url) as conn:
        channel, message = unacked_message(conn, "patch-closed")
        conn.transport.client = None
        channel.close()  # the consumer closes it after a lost connection; the task still runs
        message.ack()  # unpatched: AttributeError 'NoneType' object has no attribute 'client'
    assert in_unacked_hash(redis_url, message)
