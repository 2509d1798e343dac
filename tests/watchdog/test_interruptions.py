"""Interruptions: an instance the provider lost without our asking preempts its attempt; a
healthy one, one we asked to terminate, or one whose provider cannot be listed does not."""

from __future__ import annotations

from jobs.providers import InstanceStatus, ProviderError
from queue_app.celery_app import segment_task_id
from queue_app.statemachine import JobState
from tests.watchdog.conftest import World
from watchdog.tick import run_tick


def test_preempted_instance_preempts_its_attempt(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.training(job_id, segment=3)
    world.provider.set_status(instance.instance_id, InstanceStatus.PREEMPTED)

    report = run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED and job.attempt == 1 and job.preemptions == 1
    assert "preempted at local (not requested by us)" in (job.reason or "")
    assert "resuming as attempt 2 from the newest checkpoint" in (job.reason or "")
    assert world.revoked == [segment_task_id(job_id, 1, 3)]
    assert world.store.instance(instance.instance_id).terminate_requested_at is not None
    assert world.store.attempt(job_id, 1).end_reason == job.reason
    assert [(a.check, a.kind) for a in report.actions] == [
        ("interruptions", "preempted"),
        ("interruptions", "terminated"),
    ]


def test_vanished_instance_counts_as_lost(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id, JobState.BOOTSTRAPPING)
    del world.provider.instances[instance.instance_id]

    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED
    assert "no longer exists at local" in (job.reason or "")


def test_a_second_tick_does_not_preempt_again(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.provider.set_status(instance.instance_id, InstanceStatus.TERMINATED)

    run_tick(world.context())
    second = run_tick(world.context())

    assert world.store.job(job_id).preemptions == 1
    assert [a.kind for a in second.actions] == ["settled"]


def test_healthy_and_requested_terminations_are_left_alone(world: World) -> None:
    healthy = world.sweep()
    world.launch(healthy)
    asked = world.sweep()
    instance = world.launch(asked)
    world.store.mark_instance_terminating(instance.instance_id)
    world.provider.set_status(instance.instance_id, InstanceStatus.TERMINATED)

    run_tick(world.context())

    assert world.store.job(healthy).state is JobState.TRAINING
    assert world.store.job(asked).state is JobState.TRAINING


def test_provider_that_cannot_be_listed_acts_on_nothing(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.provider.set_status(instance.instance_id, InstanceStatus.PREEMPTED)

    def broken_list(include_foreign: bool = False) -> list[object]:
        raise ProviderError("503 from the API")

    world.provider.list = broken_list  # type: ignore[method-assign,assignment]
    report = run_tick(world.context())

    assert world.store.job(job_id).state is JobState.TRAINING
    assert [(e.check, e.target) for e in report.errors] == [("providers", "local")]
    assert "503 from the API" in report.errors[0].detail


def test_stale_attempt_instance_is_not_an_interruption(world: World) -> None:
    job_id = world.sweep()
    first = world.launch(job_id)
    world.store.transition(job_id, 1, JobState.PREEMPTED, reason="test")
    world.launch(job_id, JobState.BOOTING)
    world.provider.set_status(first.instance_id, InstanceStatus.PREEMPTED)

    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.BOOTING and job.attempt == 2
