"""Orphans: instances of ours at the provider that no live attempt uses are terminated after
the grace period; records of instances the provider no longer runs are settled."""

from __future__ import annotations

import time

from jobs.providers import InstanceStatus
from queue_app.statemachine import HandoffStatus, InstanceState, JobState
from tests.watchdog.conftest import World
from watchdog.orphans import SEEN_KEY
from watchdog.tick import run_tick


def test_unknown_instance_is_reaped_after_the_grace_period(world: World) -> None:
    world.provider.add("stray-1", "sf-made-by-hand")
    world.provider.add("foreign-1", "someone-elses-box")
    grace = world.settings.watchdog_orphan_grace_s

    run_tick(world.context())
    run_tick(world.context(now=time.time() + grace - 5))
    assert world.provider.instances["stray-1"].status is InstanceStatus.ACTIVE

    report = run_tick(world.context(now=time.time() + grace + 5))

    assert world.provider.instances["stray-1"].status is InstanceStatus.TERMINATED
    assert world.provider.instances["foreign-1"].status is InstanceStatus.ACTIVE
    [action] = report.actions
    assert action.target == "stray-1" and "not an instance of any saefleet job" in action.detail


def test_instance_of_a_finished_job_is_reaped(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.store.transition(job_id, 1, JobState.FAILED, reason="test")

    run_tick(world.context())
    report = run_tick(world.context(now=time.time() + world.settings.watchdog_orphan_grace_s + 1))

    assert world.provider.instances[instance.instance_id].status is InstanceStatus.TERMINATED
    assert "its job is FAILED" in report.actions[0].detail
    run_tick(world.context())
    assert world.store.instance(instance.instance_id).state is InstanceState.TERMINATED
    assert world.store.r.hgetall(SEEN_KEY) == {}


def test_instance_in_use_is_never_an_orphan(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)

    run_tick(world.context(now=time.time() + 10 * world.settings.watchdog_orphan_grace_s))

    assert world.provider.instances[instance.instance_id].status is InstanceStatus.ACTIVE
    assert world.store.r.hgetall(SEEN_KEY) == {}


def test_a_noticed_instance_handing_off_its_checkpoint_is_no_orphan_until_closed(
    world: World,
) -> None:
    job_id = world.sweep()
    noticed = world.launch(job_id)
    world.store.move_handoff(job_id, 1, None, HandoffStatus.OPEN, handoff_opened_at=time.time())
    world.store.transition(job_id, 1, JobState.PREEMPTING)
    world.store.transition(job_id, 1, JobState.PREEMPTED)
    world.launch(job_id, JobState.BOOTING)  # attempt 2 boots meanwhile
    later = time.time() + world.settings.watchdog_orphan_grace_s + 1

    run_tick(world.context())
    run_tick(world.context(now=later))
    assert world.provider.instances[noticed.instance_id].status is InstanceStatus.ACTIVE

    world.store.move_handoff(job_id, 1, HandoffStatus.OPEN, HandoffStatus.LOST)
    run_tick(world.context(now=later))
    run_tick(world.context(now=later + world.settings.watchdog_orphan_grace_s + 1))
    assert world.provider.instances[noticed.instance_id].status is InstanceStatus.TERMINATED


def test_terminated_record_still_running_is_terminated_again(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.store.transition(job_id, 1, JobState.CANCELLED, reason="test")
    world.store.mark_instance_terminated(instance.instance_id)

    run_tick(world.context())
    report = run_tick(world.context(now=time.time() + world.settings.watchdog_orphan_grace_s + 1))

    assert world.provider.instances[instance.instance_id].status is InstanceStatus.TERMINATED
    assert "recorded terminated but is still active" in report.actions[0].detail


def test_gone_instance_is_settled_and_its_cost_clock_stops(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.store.mark_instance_terminating(instance.instance_id)
    world.provider.set_status(instance.instance_id, InstanceStatus.TERMINATED)

    report = run_tick(world.context())

    record = world.store.instance(instance.instance_id)
    assert record.state is InstanceState.TERMINATED and record.terminated_at is not None
    assert [a.kind for a in report.actions] == ["settled"]
