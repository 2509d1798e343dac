"""Drain and teardown as an operator runs them, mid-sweep, through the real system (CLI, Celery
control worker with beat, tunnel service, local-provider instances with real sshd and GPU-side
workers): drain then teardown, drain then undo, teardown mid-segment, and a drain across a
control worker killed and restarted.

Each scenario ends with no instance left, the sweep finalized at most once, and no trained
segment lost: every job's newest kept checkpoint is at least the step of the last segment it
finished, in any attempt. What each took is printed (`-s`) for the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from queue_app.records import JobRecord
from queue_app.statemachine import InstanceState, JobState
from tests.e2e.harness import (
    LONG_RUN,
    QUICK_REDELIVERY,
    ControlPlane,
    pulled_checkpoint_while_training,
    start_plane,
)
from tests.e2e.held_stages import arm, reached, release
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

TWO_JOBS = {"train.seed": [0, 1]}
HELD_STAGES = "tests.e2e.held_stages"
# Runs that are resumed and finish: short enough to finish soon after --undo, in 1.2-second
# segments so that a checkpoint is pulled early (a fast machine still trains several).
UNDONE_RUN: dict[str, Any] = {"train.total_tokens": 131_072, "segment_minutes": 0.02}


def ops(plane: ControlPlane, *args: str) -> tuple[int, dict[str, Any], float]:
    """Run an operator command with `--json`; its exit code, report and seconds taken."""
    started = time.monotonic()
    proc = plane.run(*args, "--json")
    taken = time.monotonic() - started
    assert proc.stdout, f"{args}: no output; stderr: {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(proc.stdout), taken


def step_of(name: str | None) -> int:
    """The step of a checkpoint named `step-<n>` (or `checkpoints/step-<n>`); 0 for none."""
    return int(name.rsplit("step-", 1)[1]) if name else 0


def last_finished_step(plane: ControlPlane, job_id: str) -> int:
    """The step of the newest checkpoint any segment of the job finished with, any attempt."""
    return max(
        (step_of(a.segment_checkpoint) for a in plane.store.attempts(job_id)),
        default=0,
    )


def training_past_a_checkpoint(plane: ControlPlane, job_ids: list[str]) -> bool:
    """Every job has a pulled checkpoint and is training its next segment."""
    for job_id in job_ids:
        if pulled_checkpoint_while_training(plane.store, job_id) is None:
            return False
        record = plane.store.attempt(job_id, plane.store.job(job_id).attempt)
        if record.segment_status != "running" or record.pulled_segment < 1:
            return False
    return True


def start_sweep(plane: ControlPlane, tmp_path: Path, assets: dict[str, Path], **run: Any) -> str:
    grid = run.pop("grid", TWO_JOBS)
    sweep_id = plane.submit(write_sweep(tmp_path, assets, grid=grid, **run))
    job_ids = plane.store.sweep(sweep_id).job_ids
    wait_for(
        "every job training past a pulled checkpoint",
        lambda: training_past_a_checkpoint(plane, job_ids),
        timeout_s=300,
        every_s=0.1,
    )
    return sweep_id


def hold_supervise(plane: ControlPlane, job_ids: list[str]) -> None:
    """Hold each job's supervise (tests.e2e.held_stages): no segment is sent after the one
    running, so the job is still training when a drain comes, however fast this machine trains
    (the drain step is the watchdog's, never held)."""
    for job_id in job_ids:
        arm(plane.home, "supervise_training", job_id, 1)
    for job_id in job_ids:
        probe = lambda j=job_id: reached(plane.home, "supervise_training", j, 1)  # noqa: E731
        wait_for(f"supervise of {job_id} to be held", probe, timeout_s=60)


def assert_nothing_lost(plane: ControlPlane, sweep_id: str) -> list[JobRecord]:
    """No instance left, finalized at most once, every finished segment's checkpoint kept."""
    assert plane.running_instances() == []
    assert all(i.state is InstanceState.TERMINATED for i in plane.store.instances())
    assert plane.store.sweep(sweep_id).finalize_runs <= 1
    jobs = plane.store.sweep_jobs(sweep_id)
    for job in jobs:
        kept = plane.settings.checkpoints_dir(sweep_id, job.job_id) / (job.latest_checkpoint or "")
        assert job.latest_checkpoint and kept.is_dir(), job
        assert step_of(job.latest_checkpoint) >= last_finished_step(plane, job.job_id), job
    return jobs


def kept_steps(jobs: list[JobRecord]) -> dict[str, int]:
    return {j.job_id: step_of(j.latest_checkpoint) for j in jobs}


def test_drain_then_teardown_keeps_every_checkpoint_in_seconds(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True)
    sweep_id = start_sweep(plane, tmp_path, fleet_assets, **LONG_RUN)

    code, drained, drain_s = ops(plane, "queue", "drain")
    assert code == 0, drained
    code, report, teardown_s = ops(plane, "fleet", "teardown", "--yes")

    assert code == 0, report
    assert teardown_s < 60  # not the 300 s checkpoint timeout
    jobs = assert_nothing_lost(plane, sweep_id)
    for job in jobs:
        assert job.state is JobState.CANCELLED
        assert f"last checkpoint kept: {job.latest_checkpoint}" in (job.reason or "")
    kept = kept_steps(jobs)
    print(f"\ndrain->teardown: drain {drain_s:.1f}s, teardown {teardown_s:.1f}s, kept {kept}")


def test_drain_then_undo_resumes_every_job_and_the_sweep_finishes(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True, app=HELD_STAGES)
    sweep_id = start_sweep(plane, tmp_path, fleet_assets, **UNDONE_RUN)
    hold_supervise(plane, plane.store.sweep(sweep_id).job_ids)

    code, drained, drain_s = ops(plane, "queue", "drain", "--wait", "120")
    for job_id in plane.store.sweep(sweep_id).job_ids:
        release(plane.home, job_id)

    assert code == 0, drained
    assert plane.running_instances() == []
    paused = plane.store.sweep_jobs(sweep_id)
    assert [j.state for j in paused] == [JobState.PAUSED] * 2
    assert all(j.preemptions == 0 and j.latest_checkpoint for j in paused)
    code, status, _ = ops(plane, "queue", "drain", "--status")
    assert {j["way"] for j in status["status"]["jobs"]} == {
        "paused at no cost; --undo resumes it from its checkpoint"
    }
    code, undone, undo_s = ops(plane, "queue", "drain", "--undo")
    assert code == 0, undone
    started = time.monotonic()
    sweep = plane.wait_sweep(sweep_id, timeout_s=300)
    finish_s = time.monotonic() - started

    assert sweep.finalize_runs == 1
    jobs = assert_nothing_lost(plane, sweep_id)
    for job, before in zip(jobs, paused, strict=True):
        assert job.state is JobState.SUCCEEDED and job.attempt == 2 and job.preemptions == 0
        assert plane.store.attempt(job.job_id, 2).resume_from == before.latest_checkpoint
    print(
        f"\ndrain->undo: drain --wait {drain_s:.1f}s, undo {undo_s:.1f}s, "
        f"sweep finished {finish_s:.1f}s later, paused at {kept_steps(paused)}"
    )


def test_teardown_mid_segment_keeps_the_segment(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, quick_verdicts=True)
    sweep_id = start_sweep(plane, tmp_path, fleet_assets, grid={}, **LONG_RUN)
    [job_id] = plane.store.sweep(sweep_id).job_ids
    pulled_before = step_of(plane.store.job(job_id).latest_checkpoint)

    code, report, teardown_s = ops(plane, "fleet", "teardown", "--yes")

    assert code == 0, report
    [job] = assert_nothing_lost(plane, sweep_id)
    assert job.state is JobState.CANCELLED
    assert step_of(job.latest_checkpoint) > pulled_before  # the segment in flight was kept
    print(f"\nteardown mid-segment: {teardown_s:.1f}s, kept {kept_steps([job])}")


def test_drain_across_a_control_worker_killed_and_restarted(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.env.update(QUICK_REDELIVERY)
    start_plane(plane, quick_verdicts=True, app=HELD_STAGES)
    sweep_id = start_sweep(plane, tmp_path, fleet_assets, grid={}, **UNDONE_RUN)
    [job_id] = plane.store.sweep(sweep_id).job_ids
    hold_supervise(plane, [job_id])

    started = time.monotonic()
    code, drained, _ = ops(plane, "queue", "drain")
    assert code == 0, drained
    release(plane.home, job_id)  # the drained control queue holds supervise now
    plane.stop("control", kill=True)
    plane.start_control(concurrency=4, app=HELD_STAGES)
    wait_for(
        "the restarted watchdog to pause the job",
        lambda: plane.store.job(job_id).state is JobState.PAUSED and not plane.running_instances(),
        timeout_s=300,
        every_s=0.2,
    )
    paused_s = time.monotonic() - started
    paused = plane.store.job(job_id)
    code, undone, _ = ops(plane, "queue", "drain", "--undo")
    assert code == 0, undone
    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    assert sweep.finalize_runs == 1
    [job] = assert_nothing_lost(plane, sweep_id)
    assert job.state is JobState.SUCCEEDED and job.attempt == 2 and job.preemptions == 0
    assert plane.store.attempt(job_id, 2).resume_from == paused.latest_checkpoint
    print(
        f"\ndrain across a killed control worker: paused in {paused_s:.1f}s, "
        f"sweep finished {time.monotonic() - started:.1f}s after the drain"
    )
