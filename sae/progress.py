"""The throttled heartbeat file and progress callback of a training segment."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae.atomic_files import write_atomic

REPORT_INTERVAL_S = 2.0
"""Heartbeat and on_progress cadence (seconds, at most, between steps)."""


class ProgressReporter:
    """Writes `heartbeat_path` (the snapshot, the time and our pid) and calls `on_progress`,
    each at most every REPORT_INTERVAL_S unless forced."""

    def __init__(
        self, on_progress: Callable[[dict[str, Any]], None] | None, heartbeat_path: Path | None
    ) -> None:
        self.on_progress, self.heartbeat_path = on_progress, heartbeat_path
        self.last_beat = self.last_progress = -float("inf")
        self.snapshot: dict[str, Any] = {}

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.heartbeat_path is None or (not force and now - self.last_beat < REPORT_INTERVAL_S):
            return
        self.last_beat = now
        payload = {**self.snapshot, "time": time.time(), "pid": os.getpid()}
        write_atomic(self.heartbeat_path, json.dumps(payload), durable=False)

    def progress(self, snapshot: dict[str, Any], force: bool = False) -> None:
        self.snapshot = snapshot
        self.beat(force)
        now = time.monotonic()
        if self.on_progress is not None and (
            force or now - self.last_progress >= REPORT_INTERVAL_S
        ):
            self.last_progress = now
            self.on_progress(dict(snapshot))
