"""A workaround for a crash of Celery workers when the Redis connection drops (Celery 5.7.0,
kombu 5.7.0): without it a Redis restart, or an SSH tunnel drop under a GPU-side worker, kills
every worker that holds an unacknowledged message, and the control worker always holds some
(its polls wait as retries with a countdown).

What happens: on the connection error the consumer first `collect()`s the connection, which
detaches the transport from it, and then `close()`s it; that closes the channel, whose QoS
restores the unacknowledged messages with a new Redis client built from the detached transport:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in `_connparams`, which nothing
catches ("Unrecoverable error", the worker exits).

The same detached transport crashes the worker when a task that was running during the drop
finishes and its message is acknowledged (or rejected) before the consumer has reconnected.

The fix: a channel whose transport was detached leaves its unacknowledged messages where they
are, in Redis's unacked hash, and forgets them locally; the transport's visibility-timeout
restore (`unacked_restore_interval`, see queue_app.celery_app) delivers them again, as it does
for a worker that was killed, and the stages treat the repeat as a duplicate. Found by
tests/e2e/test_faults_redis_restart.py.
"""

from __future__ import annotations

import functools
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS


def apply() -> None:
    """Patch kombu's Redis QoS once per process (idempotent)."""
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, "_saefleet_patched", False):
        return
    restore, ack, reject = qos.restore_unacked, qos.ack, qos.reject

    @functools.wraps(restore)
    def restore_unacked(self: kombu_redis.QoS, client: Any = None) -> Any:
        if client is None and _detached(self):
            self._delivered.clear()
            return None
        return restore(self, client)

    @functools.wraps(ack)
    def ack_unless_detached(self: kombu_redis.QoS, delivery_tag: Any) -> None:
        if _detached(self):
            _forget(self, delivery_tag)
            return
        ack(self, delivery_tag)

    @functools.wraps(reject)
    def reject_unless_detached(
        self: kombu_redis.QoS, delivery_tag: Any, requeue: bool = False
    ) -> None:
        if _detached(self):
            _forget(self, delivery_tag)
            return
        reject(self, delivery_tag, requeue)

    restore_unacked._saefleet_patched = True  # type: ignore[attr-defined]
    qos.restore_unacked = restore_unacked
    qos.ack = ack_unless_detached
    qos.reject = reject_unless_detached


def _detached(qos: kombu_redis.QoS) -> bool:
    """The channel's transport was detached from its connection (the connection dropped), or
    the channel was closed since."""
    transport = qos.channel.connection
    return transport is None or transport.client is None


def _forget(qos: kombu_redis.QoS, delivery_tag: Any) -> None:
    """Drop the message from this worker's bookkeeping; Redis keeps it unacked."""
    VirtualQoS.ack(qos, delivery_tag)
