"""The tick: one at a time fleet-wide (real Redis lock), and a failing check does not stop the
others."""

from __future__ import annotations

import threading

import pytest

from jobs.providers import InstanceStatus
from queue_app.statemachine import JobState
from tests.support.waiting import wait_for
from tests.watchdog.conftest import World
from watchdog.report import TickReport
from watchdog.tick import TICK_LEASE, run_tick


def test_two_ticks_at_once_one_acts_the_other_skips(redis_world: World) -> None:
    world = redis_world
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.probe.delay_s = 0.5  # keeps the first tick inside its lock
    world.provider.set_status(instance.instance_id, InstanceStatus.UNHEALTHY)
    world.probe.results.clear()
    reports: list[TickReport] = []
    start = threading.Barrier(2)

    def tick() -> None:
        start.wait()
        reports.append(run_tick(world.context()))

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(r.skipped for r in reports) == [False, True]
    assert world.store.job(job_id).preemptions == 1
    assert world.store.job(job_id).state is JobState.PREEMPTED


def test_a_crashed_tick_s_lock_expires(redis_world: World) -> None:
    world = redis_world
    crashed = world.store.lease(TICK_LEASE, ttl_s=0.3)
    assert crashed.__enter__()  # acquired and never released, like a killed tick

    assert run_tick(world.context()).skipped
    wait_for("the crashed tick's lease to lapse", lambda: not run_tick(world.context()).skipped, 10)


def test_a_failing_check_is_reported_and_the_others_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> set[str]:
        raise RuntimeError("bug in a check")

    monkeypatch.setattr("watchdog.tick.check_stuck", broken)
    stray = world.provider.add("stray-1", "sf-stray")

    report = run_tick(world.context())

    assert [(e.check, e.detail) for e in report.errors] == [
        ("stuck", "RuntimeError: bug in a check")
    ]
    assert world.store.r.hexists("sf:watchdog:orphans", stray.id)
