"""Leases: a Redis lock with expiry that at most one process holds at a time, optionally
renewed by a thread while it is held (`Store.lease` names them under the store's prefix)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis


@contextmanager
def lease(
    client: redis.Redis, key: str, ttl_s: float, blocking: bool = False, renew: bool = False
) -> Iterator[bool]:
    """A Redis lock with expiry; yields whether it was acquired. With `renew`, a thread
    extends it every third of `ttl_s` while it is held: a long holder keeps it, and one that
    is killed loses it within `ttl_s`."""
    lock = client.lock(  # its token is shared with the renewing thread
        key, timeout=ttl_s, blocking=blocking, thread_local=False
    )
    acquired = bool(lock.acquire(blocking=blocking))
    released = threading.Event()
    if acquired and renew:
        threading.Thread(target=_keep_extending, args=(lock, ttl_s, released), daemon=True).start()
    try:
        yield acquired
    finally:
        released.set()
        if acquired:
            # It may have expired while held; then the next holder already has it.
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()


def _keep_extending(lock: redis.lock.Lock, ttl_s: float, released: threading.Event) -> None:
    """Reset the lease's expiry to `ttl_s` every third of it until it is released or lost."""
    while not released.wait(ttl_s / 3):
        try:
            lock.extend(ttl_s, replace_ttl=True)
        except redis.exceptions.LockError:
            return  # it expired and someone else may hold it now
        except redis.exceptions.RedisError:
            continue  # Redis unreachable for now: try again at the next third
