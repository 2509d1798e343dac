"""The GPU-side worker dies while sshd stays up, end to end: liveness notices the worker
process is gone, the attempt is preempted and the job completes on attempt 2."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jobs.remote import layout_for
from queue_app.statemachine import JobState
from tests.e2e.harness import (
    LONG_RUN,
    ControlPlane,
    start_plane,
    submit_one_job,
    wait_pulled_checkpoint,
)

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_killed_gpu_worker_is_detected_and_resumed(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True)
    sweep_id, job_id = submit_one_job(plane, tmp_path, fleet_assets, **LONG_RUN)
    wait_pulled_checkpoint(plane, job_id)
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
