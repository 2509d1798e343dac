"""Helpers for the watchdog's end-to-end tests: waiting on job records and injecting faults
into local-provider instances at chosen moments."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.support.fleet import ControlPlane

T = TypeVar("T")

# How the provider's account of a killed local instance reads, in whichever words the watchdog
# or the stage saw it: a kill stops sshd before the provider records "preempted", so a look in
# between sees "unhealthy"; await_ready words its own.
LOST = re.compile(
    r"(is|was) (preempted|unhealthy|terminated)( at local| while booting)"
    r"|(no longer exists at local|vanished while booting)"
)

# A run that trains for tens of seconds over many 3-second segments, so that a fault can land
# mid-training after a checkpoint was pulled.
LONG_RUN: dict[str, Any] = {"train.total_tokens": 1_048_576}

# What every end-to-end watchdog test runs with (the control worker and beat read them): the
# tiny runs beat every 2 s and their final evals take about a second.
FAST_WATCHDOG = {
    "SAEFLEET_WATCHDOG_LIVENESS_MISSES": "2",
    "SAEFLEET_WATCHDOG_HEARTBEAT_MAX_AGE_S": "20",
    "SAEFLEET_WATCHDOG_STUCK_MINUTES": "1.5",
    "SAEFLEET_WATCHDOG_SSH_TIMEOUT_S": "3",
    "SAEFLEET_WATCHDOG_ORPHAN_GRACE_S": "3",
    "SAEFLEET_COST_CAP_GRACE_S": "20",
}


def start_plane(plane: ControlPlane, concurrency: int = 4, beat: bool = True) -> None:
    """Control worker, tunnel service and (unless told) beat ticking every second."""
    plane.env.update(FAST_WATCHDOG)
    plane.start_control(concurrency=concurrency)
    plane.start_tunnels()
    if beat:
        plane.start_beat(interval_s=1.0)


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def pulled_checkpoint_while_training(store: Store, job_id: str) -> str | None:
    """The job's pulled checkpoint once it has one and still trains; fails the test at once
    when the job got past training first (the run was too short for the test's fault)."""
    job = store.job(job_id)
    if job.state in (JobState.COLLECTING, JobState.TERMINATING) or job.terminal:
        raise AssertionError(f"job {job_id} finished training first ({job.state})")
    return job.latest_checkpoint if job.state is JobState.TRAINING else None
