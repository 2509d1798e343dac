"""Stuck and idle: no training progress for T minutes, or no state change outside training
for the idle grace, preempts the attempt; recent activity does not."""

from __future__ import annotations

import time

from queue_app.statemachine import JobState, SegmentStatus
from tests.watchdog.conftest import World
from watchdog.tick import run_tick

HOUR = 3600.0


def test_training_without_progress_for_t_minutes_is_stuck(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id, launched_ago_s=HOUR)
    world.training(job_id)
    world.store.update_job(job_id, 1, progress={"step": 40, "updated_at": time.time()})
    t_s = world.settings.watchdog_stuck_minutes * 60

    run_tick(world.context(now=time.time() + t_s - 30))
    assert world.store.job(job_id).state is JobState.TRAINING
    run_tick(world.context(now=time.time() + t_s + 30))

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED
    assert "stuck: no training progress for" in (job.reason or "")


def test_progress_keeps_a_job_alive(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id, launched_ago_s=HOUR)
    later = time.time() + world.settings.watchdog_stuck_minutes * 60 + 30
    world.store.update_job(job_id, 1, progress={"step": 41, "updated_at": later - 5})

    run_tick(world.context(now=later))

    assert world.store.job(job_id).state is JobState.TRAINING


def test_a_segment_resent_again_and_again_but_never_started_is_stuck(world: World) -> None:
    """A GPU-side worker that takes no message: supervise resends the segment every minute,
    and the resends are no progress."""
    job_id = world.sweep()
    world.launch(job_id, launched_ago_s=HOUR)
    world.training(job_id)
    later = time.time() + world.settings.watchdog_stuck_minutes * 60 + 30
    world.store.update_attempt(
        job_id,
        1,
        segment=3,
        segment_status=SegmentStatus.SENT,
        segment_sent_at=time.time(),
        segment_resent_at=later - 5,
    )

    run_tick(world.context(now=later))

    assert world.store.job(job_id).state is JobState.PREEMPTED


def test_idle_instance_outside_training_is_treated_as_lost(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id, JobState.BOOTSTRAPPING, launched_ago_s=HOUR)
    grace = world.settings.watchdog_idle_grace_s

    run_tick(world.context(now=time.time() + grace - 30))
    assert world.store.job(job_id).state is JobState.BOOTSTRAPPING
    run_tick(world.context(now=time.time() + grace + 30))

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED
    assert "idle: BOOTSTRAPPING for" in (job.reason or "")
