"""A job's cost: price x running time of every instance launched for it, all attempts together;
a sweep costs what its jobs cost; a pack's instance is shared by its members."""

from __future__ import annotations

import pytest

from jobs.job_cost import costs_by_job, hours_by_job, job_cost_usd, sweep_cost_usd
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store
from tests.queue_app.records import add_instance, make_sweep

NOW = 1_800_000_000.0


def test_every_instance_of_a_job_counts_up_to_now(store: Store) -> None:
    first, second = make_sweep(store, "swcost", [JobState.TRAINING, JobState.SUCCEEDED], now=NOW)
    running = add_instance(store, first, "i-run", price_per_hour=2.0, hours=0.5, now=NOW)
    ended = add_instance(
        store, second, "i-end", price_per_hour=1.0, hours=3.0, terminated=True, now=NOW - 7200
    )
    costs = costs_by_job([running, ended], now=NOW)
    assert costs == {first.job_id: pytest.approx(1.0), second.job_id: pytest.approx(3.0)}
    # a running instance keeps costing; a terminated one stopped at its terminate time
    later = costs_by_job([running, ended], now=NOW + 3600)
    assert later == {first.job_id: pytest.approx(3.0), second.job_id: pytest.approx(3.0)}
    assert sweep_cost_usd([first.job_id, second.job_id, "never-ran"], costs) == pytest.approx(4.0)


def test_a_job_read_from_the_store_adds_up_its_attempts(store: Store) -> None:
    [job] = make_sweep(store, "swatt", [JobState.TRAINING], now=NOW)
    add_instance(store, job, "i-first", price_per_hour=2.0, hours=1.0, terminated=True, now=NOW)
    store.transition(job.job_id, 1, JobState.PREEMPTED)
    store.begin_attempt(job.job_id, 2)
    resumed = job.model_copy(update={"attempt": 2})
    add_instance(store, resumed, "i-second", price_per_hour=4.0, hours=0.25, now=NOW)
    assert job_cost_usd(store, job.job_id, now=NOW) == pytest.approx(2.0 + 1.0)
    [other] = make_sweep(store, "swnone", [JobState.QUEUED], now=NOW)
    assert job_cost_usd(store, other.job_id, now=NOW) == 0.0


def test_a_packs_instance_is_shared_by_the_members_training_at_each_moment() -> None:
    pack = InstanceRecord(
        instance_id="i-pack",
        provider="local",
        name="sf-swp-p000-1",
        job_id="swp-p000",
        sweep_id="swp",
        attempt=1,
        state=InstanceState.TERMINATED,
        launched_at=NOW,
        terminated_at=NOW + 4 * 3600,
        price_per_hour=3.0,
        members=["a", "b", "c"],
        member_left_at={"a": NOW + 3600, "b": NOW + 2 * 3600, "c": NOW + 2 * 3600},
    )
    # hour 1: three members; hour 2: two; hours 3-4: none trains, the last to leave share them.
    hours = hours_by_job([pack, pack], now=NOW + 9 * 3600)  # listed twice, counted once
    assert hours == {
        "a": pytest.approx(1 / 3),
        "b": pytest.approx(1 / 3 + 1 / 2 + 1),
        "c": pytest.approx(1 / 3 + 1 / 2 + 1),
    }
    assert sum(costs_by_job([pack]).values()) == pytest.approx(pack.cost_usd())
    assert costs_by_job([pack])["a"] == pytest.approx(1.0)
