"""The beat schedule: every entry in one module, the tick interval from the environment, and
the task names route to the watchdog queue."""

from __future__ import annotations

import json
import subprocess
import sys

from queue_app.celery_app import WATCHDOG_QUEUE, route_task
from watchdog.tasks import TICK_TASK, tick


def _schedule_in_a_fresh_process(env: dict[str, str]) -> dict[str, object]:
    code = (
        "import json; from watchdog.schedule import app; "
        "print(json.dumps(app.conf.beat_schedule, default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def test_tick_entry_uses_the_configured_interval(monkeypatch: object, home: object) -> None:
    import os

    env = {**os.environ, "SAEFLEET_WATCHDOG_INTERVAL_S": "7.5"}
    schedule = _schedule_in_a_fresh_process(env)

    assert schedule == {
        "watchdog-tick": {"task": TICK_TASK, "schedule": 7.5, "options": {"expires": 7.5}}
    }


def test_watchdog_tasks_route_to_the_watchdog_queue() -> None:
    assert tick.name == TICK_TASK
    assert route_task(TICK_TASK, (), {}, {}) == {"queue": WATCHDOG_QUEUE}
