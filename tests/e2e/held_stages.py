"""The control plane's Celery app with lifecycle stages a test can hold at their start: the
fault injection behind a preemption "during" a stage that itself takes a fraction of a second
(collect), which no watcher polling the job's state can hit on every machine. A test runs the
control worker on this module (`celery -A tests.e2e.held_stages worker`) instead of
`queue_app.celery_app`; the stages are the real ones.

A hold is armed as the file `$SAEFLEET_HOME/holds/<stage>-<job>-a<attempt>`. The stage's task,
about to run for that job and attempt, writes `<hold>.reached` and waits until the hold file is
gone (at most HOLD_MAX_S), then runs as usual.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery.signals import task_prerun

from jobs.pipeline import JobRef
from queue_app.celery_app import app
from queue_app.settings import get_settings

HOLD_MAX_S = 120.0
STAGE_TASK_PREFIX = "saefleet.stage."


def hold_path(home: Path, stage: str, job_id: str, attempt: int) -> Path:
    return home / "holds" / f"{stage}-{job_id}-a{attempt}"


def arm(home: Path, stage: str, job_id: str, attempt: int) -> None:
    """Hold `stage` of the job's `attempt` at its start until `release`."""
    path = hold_path(home, stage, job_id, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def reached(home: Path, stage: str, job_id: str, attempt: int) -> bool:
    """Whether the held stage is waiting at its start."""
    return _reached(hold_path(home, stage, job_id, attempt)).exists()


def release(home: Path, job_id: str) -> None:
    """Let every held stage of the job go on."""
    for hold in (home / "holds").glob(f"*-{job_id}-a*"):
        if hold.suffix != ".reached":
            hold.unlink(missing_ok=True)


def _reached(hold: Path) -> Path:
    return hold.with_name(f"{hold.name}.reached")


@task_prerun.connect
def _hold(task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", "") or ""
    if not name.startswith(STAGE_TASK_PREFIX) or not args or not isinstance(args[0], dict):
        return
    ref = JobRef.model_validate(args[0])
    hold = hold_path(
        get_settings().home, name.removeprefix(STAGE_TASK_PREFIX), ref.job_id, ref.attempt
    )
    if not hold.exists():
        return
    _reached(hold).touch()
    deadline = time.monotonic() + HOLD_MAX_S
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = ["app", "arm", "reached", "release"]
