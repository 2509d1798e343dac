"""Waiting on the event a test expects, with a deadline (never a sleep before an assert)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy (a Redis that is restarting counts as not
    yet); TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
