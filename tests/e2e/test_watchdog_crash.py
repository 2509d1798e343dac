"""A control-plane crash mid-training, end to end: the control worker, beat and the tunnel
service are killed (SIGKILL) and started again, as `saefleet up` would. The job is not lost,
the sweep finalizes once, and no instance is left running.

While the tunnel is down the GPU-side worker cannot reach Redis; a segment that ends then
cannot record its outcome, its record says "running" forever, and only the watchdog (the
trainer's heartbeat stops, so liveness misses) gets the job going again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from queue_app.statemachine import JobState
from tests.e2e.harness import (
    LONG_RUN,
    ControlPlane,
    start_plane,
    submit_one_job,
    wait_pulled_checkpoint,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

DOWN_S = 3.0  # the control plane stays down this long, as after a crash of its machine


def test_control_plane_crash_converges(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True)
    sweep_id, job_id = submit_one_job(plane, tmp_path, fleet_assets, **LONG_RUN)
    wait_pulled_checkpoint(plane, job_id)
    for name in ("beat", "control", "tunnels"):
        plane.stop(name, kill=True)
    time.sleep(DOWN_S)
    start_plane(plane, quick_verdicts=True)

    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    assert sweep.finalize_runs == 1
    assert plane.store.job(job_id).state is JobState.SUCCEEDED
    wait_for("every instance gone", lambda: plane.running_instances() == [], 60, every_s=1)
