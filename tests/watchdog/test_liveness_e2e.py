"""The GPU-side worker dies while sshd stays up, end to end: liveness notices the worker
process is gone, the attempt is preempted and the job completes on attempt 2."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jobs.remote import layout_for
from queue_app.statemachine import JobState
from tests.support.fleet import ControlPlane, write_sweep
from tests.watchdog.e2e import LONG_RUN, pulled_checkpoint_while_training, start_plane, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_killed_gpu_worker_is_detected_and_resumed(
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
    instance = plane.store.instance(plane.store.attempt(job_id, 1).instance_id or "")
    worker_pid = int(Path(layout_for(instance).worker_pid).read_text())
    os.kill(worker_pid, signal.SIGKILL)

    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    job = plane.store.job(job_id)
    assert sweep.finalize_runs == 1
    assert (job.state, job.attempt, job.preemptions) == (JobState.SUCCEEDED, 2, 1)
    first = plane.store.attempt(job_id, 1)
    assert first.end_reason and "the GPU-side worker process is not running" in first.end_reason
    assert plane.running_instances() == []
