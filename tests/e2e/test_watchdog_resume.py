"""Preemption during training, end to end: the watchdog (or the stage that notices first) sees
the local provider kill a job's instance after a checkpoint; attempt 2 resumes from the newest
checkpoint and the run ends exactly where an uninterrupted twin ends."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from queue_app.statemachine import JobState
from tests.e2e.harness import (
    LONG_RUN,
    LOST,
    ControlPlane,
    pulled_checkpoint_while_training,
    start_plane,
)
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_preempted_during_training_resumes_from_newest_checkpoint(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True)
    sweep_file = write_sweep(tmp_path, fleet_assets, grid={"train.seed": [0, 0]}, **LONG_RUN)
    sweep_id = plane.submit(sweep_file)
    victim, twin = (j.job_id for j in plane.store.sweep_jobs(sweep_id))

    def mid_segment_after_a_checkpoint() -> str | None:
        pulled = pulled_checkpoint_while_training(plane.store, victim)
        if pulled is None:
            return None
        job = plane.store.job(victim)
        pulled_step = int(pulled.removeprefix("step-"))
        if int(job.progress.get("step", 0)) < pulled_step + 3:
            return None
        return plane.store.attempt(victim, 1).instance_id

    instance_id = wait_for(
        "training past a pulled checkpoint", mid_segment_after_a_checkpoint, timeout_s=240
    )
    step_at_preemption = int(plane.store.job(victim).progress.get("step", 0))
    preempted_at = time.time()
    plane.local_provider().preempt(instance_id)

    def training_again() -> float | None:
        job = plane.store.job(victim)
        at = float(job.progress.get("updated_at", 0))
        return at if job.attempt == 2 and at > preempted_at else None

    trained_again_at = wait_for("attempt 2 to train", training_again, timeout_s=240, every_s=0.02)
    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    job = plane.store.job(victim)
    assert job.state is JobState.SUCCEEDED and job.attempt == 2 and job.preemptions == 1
    first, second = plane.store.attempts(victim)
    assert LOST.search(first.end_reason or ""), first.end_reason
    assert second.resume_from is not None
    resumed_step = int(second.resume_from.removeprefix("step-"))
    assert 0 < resumed_step <= step_at_preemption
    assert sweep.finalize_runs == 1
    summary = json.loads(Path(sweep.summary_path or "").read_text())
    assert summary["states"] == {"SUCCEEDED": 2}
    assert plane.store.job(twin).attempt == 1
    assert _final_weights(plane, victim).keys() == _final_weights(plane, twin).keys()
    for name, tensor in _final_weights(plane, victim).items():
        assert torch.equal(tensor, _final_weights(plane, twin)[name]), name
    assert plane.running_instances() == []
    _record_resume_timing(
        plane, victim, preempted_at, trained_again_at, step_at_preemption, resumed_step
    )


def _final_weights(plane: ControlPlane, job_id: str) -> dict[str, torch.Tensor]:
    job = plane.store.job(job_id)
    return safetensors.torch.load_file(Path(job.artifacts_dir or "") / "final" / "sae.safetensors")


def _record_resume_timing(
    plane: ControlPlane,
    job_id: str,
    preempted_at: float,
    trained_again_at: float,
    step_at: int,
    resumed_step: int,
) -> None:
    """Print what the preemption cost: when each step of the recovery happened (seconds after
    the preemption) and the steps trained again."""
    first = plane.store.attempt(job_id, 1)
    timeline = {
        f"{e['to']}@a{e['attempt']}": round(e["ts"] - preempted_at, 2)
        for e in plane.store.events(job_id)
        if e["ts"] >= preempted_at
    }
    timeline["attempt 2 training (first progress)"] = round(trained_again_at - preempted_at, 2)
    report = {
        "detected_by": first.end_reason,
        "timeline_s": timeline,
        "steps_lost": step_at - resumed_step,
        "step_at_preemption": step_at,
        "resumed_from_step": resumed_step,
    }
    print(json.dumps(report, indent=2))
