"""Spending from our own timestamps: per job across attempts, per sweep, per UTC day."""

from __future__ import annotations

import time

import pytest

from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState
from tests.watchdog.conftest import World
from watchdog.fleet import load_fleet
from watchdog.spend import cost_between, day_start, load_spend


def _instance(launched_at: float, terminated_at: float | None = None) -> InstanceRecord:
    return InstanceRecord(
        instance_id="i",
        provider="local",
        name="sf-j-1",
        job_id="j",
        sweep_id="s",
        attempt=1,
        state=InstanceState.LAUNCHED,
        launched_at=launched_at,
        price_per_hour=2.0,
        terminated_at=terminated_at,
    )


def test_cost_between_clips_to_the_window() -> None:
    start = day_start(time.time())
    assert cost_between(_instance(start - 3600), start, start + 1800) == pytest.approx(1.0)
    assert cost_between(_instance(start + 600, start + 2400), start, start + 3600) == (
        pytest.approx(1.0)
    )
    assert cost_between(_instance(start - 7200, start - 3600), start, start + 3600) == 0.0


def test_job_cost_adds_every_attempt_and_sweep_adds_its_jobs(world: World) -> None:
    now = time.time()  # every moment is set from it: the sums do not drift with the clock
    job_id = world.sweep(budget_usd=50)
    first = world.launch(job_id, price_per_hour=3600.0).instance_id
    world.store.update_instance(first, launched_at=now - 10)
    world.store.mark_instance_terminated(first, at=now - 5)  # $5 in all
    world.store.transition(job_id, 1, JobState.PREEMPTED, reason="test")
    second = world.launch(job_id, price_per_hour=3600.0).instance_id
    world.store.update_instance(second, launched_at=now - 2)  # $2 so far

    spend = load_spend(world.store, load_fleet(world.store), now, with_day=True)

    assert spend.job_usd[job_id] == pytest.approx(7.0)
    assert spend.sweep_usd["sw1"] == pytest.approx(7.0)
    assert spend.sweep_budget_usd["sw1"] == 50
    assert spend.day_usd == pytest.approx(7.0)


def test_day_spend_is_only_computed_when_asked(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id)
    spend = load_spend(world.store, load_fleet(world.store), time.time(), with_day=False)
    assert spend.day_usd is None
