"""Stages `provision` and `await_ready` against a fake provider: launch and register, capacity
waits bounded by max_wait_for_capacity_s, transient provider errors retried with backoff and
then failed, boot bounded by the boot timeout, and duplicates that launch nothing twice."""

from __future__ import annotations

import pytest

from jobs.providers import (
    AuthError,
    CapacityError,
    InstanceStatus,
    ProviderError,
    instance_name,
)
from jobs.stage_base import MAX_TRANSIENT_RETRIES, backoff
from jobs.stages import await_ready, provision
from queue_app.statemachine import InstanceState, JobState
from tests.jobs.stage_world import StageWorld, ago

S = JobState


def test_provision_launches_registers_and_moves_the_job_to_booting(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    delivery = stage_world.deliver(provision, job_id)
    assert delivery == stage_world.passed_on(job_id)
    [instance] = stage_world.provider.instances.values()
    assert instance.name == instance_name(job_id, 1)
    assert stage_world.job(job_id).state is S.BOOTING
    assert stage_world.attempt(job_id).instance_id == instance.id
    record = stage_world.instance(instance.id)
    assert (record.state, record.job_id, record.price_per_hour) == (
        InstanceState.LAUNCHED,
        job_id,
        1.0,
    )


def test_provision_waits_for_capacity_and_launches_when_it_comes(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.provider.fail_next("launch", CapacityError("no capacity"), CapacityError("none"))
    first, second = stage_world.deliver(provision, job_id), stage_world.deliver(provision, job_id)
    assert (first.state, first.countdown) == ("RETRY", backoff(1, base=5.0))
    assert (second.state, second.countdown) == ("RETRY", backoff(2, base=5.0))
    assert "no capacity" in (stage_world.attempt(job_id).waiting_for or "")
    assert stage_world.job(job_id).state is S.PROVISIONING
    assert stage_world.deliver(provision, job_id).state == "SUCCESS"
    assert stage_world.job(job_id).state is S.BOOTING
    assert stage_world.attempt(job_id).waiting_since is None


def test_the_capacity_wait_is_bounded_by_max_wait_for_capacity_s(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep(max_wait_for_capacity_s=600)
    stage_world.provider.fail_next("launch", CapacityError("no capacity"))
    assert stage_world.deliver(provision, job_id).state == "RETRY"
    stage_world.store.update_attempt(job_id, 1, waiting_since=ago(601))
    stage_world.provider.fail_next("launch", CapacityError("no capacity"))
    delivery = stage_world.deliver(provision, job_id)
    assert delivery.state == "SUCCESS"  # the failure travels as data
    assert "max_wait_for_capacity_s" in stage_world.failure(job_id)
    assert stage_world.provider.instances == {}


def test_a_transient_provider_error_is_retried_with_backoff_then_fails(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    stage_world.provider.fail_next("list", *[ProviderError("503")] * (MAX_TRANSIENT_RETRIES + 1))
    countdowns = [stage_world.deliver(provision, job_id) for _ in range(MAX_TRANSIENT_RETRIES)]
    assert [(d.state, d.countdown) for d in countdowns] == [
        ("RETRY", backoff(n)) for n in range(1, MAX_TRANSIENT_RETRIES + 1)
    ]
    assert stage_world.deliver(provision, job_id).state == "SUCCESS"
    assert stage_world.failure(job_id) == "provision: 503"


def test_a_permanent_provider_error_fails_the_job_at_once(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.provider.fail_next("launch", AuthError("the API key is invalid"))
    delivery = stage_world.deliver(provision, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.failure(job_id) == "provision: the API key is invalid"
    assert stage_world.attempt(job_id).end_reason == "provision: the API key is invalid"


def test_a_duplicate_provision_launches_nothing_twice(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.deliver(provision, job_id)
    again = stage_world.deliver(provision, job_id)
    assert again == stage_world.passed_on(job_id)
    assert stage_world.provider.calls["launch"] == 1
    assert stage_world.job(job_id).state is S.BOOTING


def test_a_provision_that_died_after_launching_finds_its_instance_by_name(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    stage_world.provider.add("fake-earlier", instance_name(job_id, 1))
    assert stage_world.deliver(provision, job_id).state == "SUCCESS"
    assert stage_world.provider.calls["launch"] == 0
    assert stage_world.attempt(job_id).instance_id == "fake-earlier"


def test_a_stale_attempts_provision_is_ignored(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.deliver(provision, job_id)
    stage_world.store.transition(job_id, 1, S.PREEMPTED)
    stage_world.store.begin_attempt(job_id, 2)
    stale = stage_world.deliver(provision, job_id, attempt=1)
    assert stale.state == "IGNORED"
    assert stage_world.provider.calls["launch"] == 1
    assert (stage_world.job(job_id).state, stage_world.job(job_id).attempt) == (S.PROVISIONING, 2)


# ---- await_ready --------------------------------------------------------------------------------


def test_await_ready_polls_until_active_and_records_the_address(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    instance = stage_world.launch(job_id, S.BOOTING)
    stage_world.provider.set_status(instance.instance_id, InstanceStatus.BOOTING)
    polled = stage_world.deliver(await_ready, job_id)
    assert (polled.state, polled.countdown) == ("RETRY", stage_world.settings.poll_interval_s)
    assert stage_world.job(job_id).state is S.BOOTING
    stage_world.provider.set_status(instance.instance_id, InstanceStatus.ACTIVE)
    assert stage_world.deliver(await_ready, job_id).state == "SUCCESS"
    assert stage_world.job(job_id).state is S.VERIFYING
    record = stage_world.instance(instance.instance_id)
    assert (record.host, record.ssh_user) == ("127.0.0.1", "ubuntu")


def test_an_instance_that_never_boots_fails_the_job_and_is_terminated(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    boot_timeout = stage_world.settings.boot_timeout_s
    instance = stage_world.launch(job_id, S.BOOTING, launched_ago_s=boot_timeout + 60)
    stage_world.provider.set_status(instance.instance_id, InstanceStatus.BOOTING)
    delivery = stage_world.deliver(await_ready, job_id)
    assert delivery.state == "SUCCESS"
    assert "SAEFLEET_BOOT_TIMEOUT_S" in stage_world.failure(job_id, instance)
    assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATING


@pytest.mark.parametrize("status", [InstanceStatus.PREEMPTED, InstanceStatus.TERMINATED])
def test_an_instance_lost_while_booting_resumes_as_the_next_attempt(
    stage_world: StageWorld, status: InstanceStatus
) -> None:
    job_id = stage_world.sweep()
    instance = stage_world.launch(job_id, S.BOOTING)
    stage_world.provider.set_status(instance.instance_id, status)
    delivery = stage_world.deliver(await_ready, job_id)
    assert delivery.state == "IGNORED" and delivery.replacement is not None
    first = delivery.replacement.tasks[0]
    assert (first.task, first.args[0]["attempt"]) == ("saefleet.stage.provision", 2)
    assert delivery.replacement.tasks[-1].task == "saefleet.stage.await_ready"
    job = stage_world.job(job_id)
    assert (job.state, job.preemptions) == (S.PREEMPTED, 1)


def test_a_duplicate_await_ready_asks_the_provider_nothing(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, S.VERIFYING)
    delivery = stage_world.deliver(await_ready, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.provider.calls["get"] == 0
    assert stage_world.job(job_id).state is S.VERIFYING
