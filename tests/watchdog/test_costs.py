"""Cost caps: a breach asks training to checkpoint and stop, then caps the job after the grace
period; a job that is not training is capped at once; sweep and daily caps apply to every live
job; a warning is logged once at 80%; a pack's member is held to its own cap on its cost share
and leaves the pack alone."""

from __future__ import annotations

import time

import pytest

from queue_app.celery_app import segment_task_id
from queue_app.statemachine import JobState
from tests.watchdog.conftest import World
from watchdog.tick import run_tick

DOLLAR_PER_SECOND = 3600.0


def test_job_cap_stops_training_then_caps_after_grace(world: World) -> None:
    job_id = world.sweep(max_cost_usd=5)
    instance = world.launch(job_id, price_per_hour=DOLLAR_PER_SECOND, launched_ago_s=6)
    world.training(job_id, segment=2)
    world.store.update_job(job_id, 1, latest_checkpoint="step-000040")

    first = run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.TRAINING and job.stop_requested == "cost_cap"
    [action] = first.actions
    assert action.kind == "stop-requested" and "max_cost_usd" in action.detail
    assert world.store.instance(instance.instance_id).terminate_requested_at is None

    run_tick(world.context(now=time.time() + 10))
    assert world.store.job(job_id).state is JobState.TRAINING

    run_tick(world.context(now=time.time() + world.settings.cost_cap_grace_s + 1))
    job = world.store.job(job_id)
    assert job.state is JobState.COST_CAPPED
    assert "training did not stop within" in (job.reason or "")
    assert "last checkpoint kept (step-000040)" in (job.reason or "")
    assert world.revoked == [segment_task_id(job_id, 1, 2)]
    assert world.store.instance(instance.instance_id).terminate_requested_at is not None


def test_job_that_is_not_training_is_capped_at_once(world: World) -> None:
    job_id = world.sweep(max_cost_usd=5)
    world.launch(job_id, JobState.BOOTSTRAPPING, DOLLAR_PER_SECOND, launched_ago_s=6)

    report = run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.COST_CAPPED
    assert "not training, so nothing to checkpoint" in (job.reason or "")
    assert [a.kind for a in report.actions] == ["capped", "terminated"]


def test_under_the_cap_nothing_happens(world: World) -> None:
    job_id = world.sweep(max_cost_usd=500)
    world.launch(job_id, price_per_hour=DOLLAR_PER_SECOND, launched_ago_s=6)

    report = run_tick(world.context())

    assert world.store.job(job_id).stop_requested is None
    assert report.actions == []


def test_sweep_budget_counts_every_job(world: World) -> None:
    job_id = world.sweep(budget_usd=5)
    world.launch(job_id, JobState.VERIFYING, DOLLAR_PER_SECOND, launched_ago_s=6)

    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.COST_CAPPED and "budget_usd" in (job.reason or "")


def test_daily_cap_applies_across_sweeps(world: World) -> None:
    world.settings = world.settings.model_copy(update={"daily_cap_usd": 10.0})
    jobs = [world.sweep(), world.sweep()]
    for job_id in jobs:
        world.launch(job_id, JobState.BOOTING, DOLLAR_PER_SECOND, launched_ago_s=6)

    run_tick(world.context())

    for job_id in jobs:
        job = world.store.job(job_id)
        assert job.state is JobState.COST_CAPPED
        assert "SAEFLEET_DAILY_CAP_USD" in (job.reason or "")


def test_warning_at_80_percent_is_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = world.sweep(max_cost_usd=10)
    world.launch(job_id, price_per_hour=DOLLAR_PER_SECOND, launched_ago_s=8.5)

    first = run_tick(world.context())
    second = run_tick(world.context())

    assert [(a.kind, a.target) for a in first.actions] == [("warning", f"job {job_id}")]
    assert "of its $10.00 cap (max_cost_usd)" in first.actions[0].detail
    assert second.actions == []
    assert world.store.job(job_id).state is JobState.TRAINING
    assert any("warning" in r.getMessage() for r in caplog.records)


def test_invalid_stored_config_is_reported_and_the_sweep_cap_still_holds(world: World) -> None:
    job_id = world.sweep(budget_usd=5)
    world.launch(job_id, JobState.BOOTING, DOLLAR_PER_SECOND, launched_ago_s=6)
    world.store.r.hset(f"sf:job:{job_id}", "spec", '{"config": {"bad": 1}, "provider": {}}')

    report = run_tick(world.context())

    assert [(e.check, e.target) for e in report.errors] == [("costs", job_id)]
    assert "stored job config is invalid" in report.errors[0].detail
    assert world.store.job(job_id).state is JobState.COST_CAPPED


def _training_pack(world: World, state: JobState = JobState.TRAINING) -> tuple[str, list[str]]:
    """A pack of two whose first member may spend $5; its instance has cost $12, $6 each."""
    pack_id, members = world.pack(members=2, own={0: {"max_cost_usd": 5}, 1: {"max_cost_usd": 500}})
    instance = world.launch(pack_id, state, DOLLAR_PER_SECOND, launched_ago_s=12)
    world.store.update_instance(instance.instance_id, members=members)
    for member in members:  # as provision records a pack's instance
        world.store.update_attempt(member, 1, instance_id=instance.instance_id)
    return pack_id, members


def test_a_pack_member_over_its_own_cap_leaves_the_pack_which_goes_on(world: World) -> None:
    pack_id, (capped, other) = _training_pack(world)
    instance_id = f"fake-{pack_id}-1"
    world.training(pack_id)

    first = run_tick(world.context())

    assert world.store.job(capped).stop_requested == "cost_cap"  # its pack ends the segment
    assert [(a.kind, a.target) for a in first.actions] == [("stop-requested", capped)]
    assert world.store.job(pack_id).stop_requested is None
    assert world.store.job(other).stop_requested is None

    run_tick(world.context(now=time.time() + world.settings.cost_cap_grace_s + 1))

    member = world.store.job(capped)
    assert member.state is JobState.COST_CAPPED and "max_cost_usd" in (member.reason or "")
    assert f"left pack {pack_id}, which goes on" in (member.reason or "")
    assert world.store.job(other).state is JobState.TRAINING
    assert world.store.job(pack_id).state is JobState.TRAINING
    instance = world.store.instance(instance_id)
    assert instance.terminate_requested_at is None and list(instance.member_left_at) == [capped]


def test_a_pack_member_over_its_cap_before_training_is_capped_at_once(world: World) -> None:
    pack_id, (capped, other) = _training_pack(world, JobState.BOOTSTRAPPING)

    report = run_tick(world.context())

    assert world.store.job(capped).state is JobState.COST_CAPPED
    assert world.store.job(other).state is JobState.BOOTSTRAPPING
    assert world.store.job(pack_id).state is JobState.BOOTSTRAPPING
    assert [(a.kind, a.target) for a in report.actions] == [("capped", capped)]
