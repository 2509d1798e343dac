"""A workaround for a crash of Celery workers when the Redis connection drops (Celery 5.7.0,
kombu 5.7.0): without it a Redis restart, or an SSH tunnel drop under a GPU-side worker, kills
every worker that holds an unacknowledged message, and the control worker always holds some
(its polls wait as retries with a countdown).

What happens: on the connection error the consumer first `collect()`s the connection, which
detaches the transport from it, and then `close()`s it; that closes the channel, whose QoS
restores the unacknowledged messages with a new Redis client built from the detached transport:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in `_connparams`, which nothing
catches ("Unrecoverable error", the worker exits).

The fix: a channel whose transport was detached leaves its unacknowledged messages where they
are, in Redis's unacked hash; the transport's visibility-timeout restore
(`unacked_restore_interval`, see queue_app.celery_app) delivers them again, as it does for a
worker that was killed. Found by tests/faults/test_redis_restart.py.
"""

from __future__ import annotations

import functools
from typing import Any

from kombu.transport import redis as kombu_redis


def apply() -> None:
    """Patch kombu's Redis QoS once per process (idempotent)."""
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, "_saefleet_patched", False):
        return
    restore = qos.restore_unacked

    @functools.wraps(restore)
    def restore_unacked(self: kombu_redis.QoS, client: Any = None) -> Any:
        if client is None and self.channel.connection.client is None:
            self._delivered.clear()  # still unacked in Redis: the visibility timeout restores
            return None
        return restore(self, client)

    restore_unacked._saefleet_patched = True  # type: ignore[attr-defined]
    qos.restore_unacked = restore_unacked
