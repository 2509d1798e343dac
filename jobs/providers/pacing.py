"""Client-side pacing: keep a process's calls to an API under its published rate limits.

A `Pacer` holds named rates ("request", "launch", ...). `acquire("request", "launch")` reserves
the earliest moment that respects every named rate, then sleeps until it. Reservations are made
under a lock and the sleeping happens outside it, so many threads sharing one pacer are spaced
out correctly without serialising their HTTP calls. A pacer paces one process; after a fork the
child starts with an empty history (see `Pacer.reset`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """At most one call per `min_interval_s`, and at most `max_per_window` per `window_s`."""

    min_interval_s: float
    max_per_window: int | None = None
    window_s: float = 60.0

    def earliest(self, history: deque[float], t: float) -> float:
        """The first moment at or after `t` that this rate allows, given past reservations."""
        if history:
            t = max(t, history[-1] + self.min_interval_s)
        if self.max_per_window is not None and len(history) >= self.max_per_window:
            t = max(t, history[-self.max_per_window] + self.window_s)
        return t


class Pacer:
    """Spaces calls out according to named `Rate`s; thread-safe."""

    def __init__(
        self,
        rates: Mapping[str, Rate],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rates = dict(rates)
        self._clock = clock
        self._sleep = sleep
        self.reset()

    def reset(self) -> None:
        """Forget every reservation (and replace the lock: safe to call in a forked child)."""
        self._lock = threading.Lock()
        self._history: dict[str, deque[float]] = {
            name: deque(maxlen=max(1, rate.max_per_window or 1))
            for name, rate in self.rates.items()
        }

    def acquire(self, *kinds: str) -> float:
        """Wait until a call of all `kinds` may go out; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = now
            while True:
                later = max(self.rates[k].earliest(self._history[k], slot) for k in kinds)
                if later == slot:
                    break
                slot = later
            for kind in kinds:
                self._history[kind].append(slot)
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
        return delay
