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
from tests.support.fleet import ControlPlane, write_sweep
from tests.watchdog.e2e import LONG_RUN, pulled_checkpoint_while_training, start_plane, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_control_plane_crash_converges(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)
    sweep_file = write_sweep(tmp_path, fleet_assets, **LONG_RUN)
    sweep_id = plane.submit(sweep_file)
    [job_id] = [j.job_id for j in plane.store.sweep_jobs(sweep_id)]
    wait_for(
        "a pulled checkpoint",
        lambda: pulled_checkpoint_while_training(plane.store, job_id),
        timeout_s=240,
    )
    for name in ("beat", "control", "tunnels"):
        plane.stop(name, kill=True)
    time.sleep(3)
    start_plane(plane)

    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    assert sweep.finalize_runs == 1
    assert plane.store.job(job_id).state is JobState.SUCCEEDED
    wait_for("every instance gone", lambda: plane.running_instances() == [], 60, every_s=1)
