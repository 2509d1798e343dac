"""The watchdog's Celery task (queue `watchdog`); beat sends it every
`SAEFLEET_WATCHDOG_INTERVAL_S` (see watchdog.schedule)."""

from __future__ import annotations

from queue_app.celery_app import app
from queue_app.settings import get_settings
from watchdog.tick import live_context, run_tick

TICK_TASK = "saefleet.watchdog.tick"


@app.task(name=TICK_TASK, acks_late=False, ignore_result=True)
def tick() -> None:
    """One watchdog tick (skipped when another tick is running). Each action it takes is logged
    as it happens; a lost tick is simply replaced by the next one (acknowledged on receipt)."""
    run_tick(live_context(get_settings()))
