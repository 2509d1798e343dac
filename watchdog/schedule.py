"""Every beat entry of saefleet, in one place. Beat runs as `celery -A watchdog.schedule beat`.

A tick that beat sends while no worker consumes the `watchdog` queue expires after one
interval instead of piling up: the next tick does the same work on fresher data."""

from __future__ import annotations

from queue_app.celery_app import app
from queue_app.settings import get_settings
from watchdog.tasks import TICK_TASK

_interval_s = get_settings().watchdog_interval_s

app.conf.beat_schedule = {
    "watchdog-tick": {
        "task": TICK_TASK,
        "schedule": _interval_s,
        "options": {"expires": _interval_s},
    },
}

__all__ = ["app"]
