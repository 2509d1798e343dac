"""A cost cap that trips mid-training, end to end: the watchdog sets the stop flag, training
checkpoints and stops, the job ends COST_CAPPED with its last checkpoint kept and its instance
terminated."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.checkpoints import verify_pulled_checkpoint
from queue_app.statemachine import InstanceState, JobState
from tests.e2e.harness import (
    LONG_RUN,
    ControlPlane,
    start_plane,
    submit_one_job,
    wait_pulled_checkpoint,
)

# Twice LONG_RUN: the run must outlast beat's start-up and first tick on a loaded machine; the
# cap stops it soon after, so the steps it would train later cost nothing.
COST_RUN = {**LONG_RUN, "train.total_tokens": 2 * LONG_RUN["train.total_tokens"]}

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_cost_cap_mid_training_stops_keeps_the_checkpoint_and_terminates(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    # $1 a second against a $5 cap: breached long before training starts, and acted on once
    # beat runs, which this test starts only after the first checkpoint was pulled.
    start_plane(plane, beat=False, quick_verdicts=True)
    sweep_id, job_id = submit_one_job(
        plane,
        tmp_path,
        fleet_assets,
        provider={"name": "local", "price_per_hour": 3600.0},
        max_cost_usd=5,
        **COST_RUN,
    )
    wait_pulled_checkpoint(plane, job_id)
    plane.start_beat(interval_s=1.0)

    sweep = plane.wait_sweep(sweep_id, timeout_s=180)

    job = plane.store.job(job_id)
    assert sweep.finalize_runs == 1
    assert job.state is JobState.COST_CAPPED and job.stop_requested == "cost_cap"
    assert job.reason and "cost_cap" in job.reason and "last checkpoint kept" in job.reason
    kept = plane.settings.checkpoints_dir(sweep_id, job_id) / (job.latest_checkpoint or "")
    assert verify_pulled_checkpoint(kept)
    # The last segment either stopped at its next step or had just finished (then supervise
    # sends no other): either way its checkpoint is the one kept.
    [attempt] = plane.store.attempts(job_id)
    assert attempt.segment_stopped or attempt.pulled_segment == attempt.segment
    assert attempt.segment_checkpoint and attempt.segment_checkpoint.endswith(job.latest_checkpoint)
    [instance] = plane.store.instances()
    assert instance.state is InstanceState.TERMINATED and instance.terminated_at
    assert plane.running_instances() == []
    log = (plane.home / "logs" / "control.out").read_text()
    assert "watchdog costs: stop-requested" in log
