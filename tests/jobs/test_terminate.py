"""Stage `terminate` against a fake provider: every instance the job had is terminated and
confirmed gone, the job SUCCEEDED and its result returned as data; provider errors are polled
again until the confirmation deadline; a failed job's chain ends here with its result; a
duplicate terminates nothing twice and returns the same result."""

from __future__ import annotations

from jobs.providers import InstanceStatus, ProviderError
from jobs.stages import terminate
from jobs.terminate import CONFIRM_TIMEOUT_S
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState
from tests.jobs.stage_world import StageWorld, ago

S = JobState


def _collected(world: StageWorld) -> tuple[str, InstanceRecord]:
    job_id = world.sweep()
    instance = world.launch(job_id, S.COLLECTING, price_per_hour=2.0, launched_ago_s=1800)
    world.store.transition(job_id, 1, S.TERMINATING)
    return job_id, instance


def test_terminate_confirms_the_instance_gone_and_returns_the_job_result(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _collected(stage_world)
    delivery = stage_world.deliver(terminate, job_id)
    assert delivery.state == "SUCCESS"
    result = delivery.value
    assert (result["job_id"], result["state"], result["attempts"]) == (job_id, "SUCCEEDED", 1)
    assert 0.99 < result["cost_usd"] < 1.01  # two dollars an hour for half an hour
    assert stage_world.provider.instances[instance.instance_id].status is InstanceStatus.TERMINATED
    assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATED
    assert stage_world.job(job_id).state is S.SUCCEEDED


def test_a_provider_error_is_polled_again_until_confirmed(stage_world: StageWorld) -> None:
    job_id, instance = _collected(stage_world)
    stage_world.provider.fail_next("terminate", ProviderError("503"))
    polled = stage_world.deliver(terminate, job_id)
    assert (polled.state, polled.countdown) == ("RETRY", 3.0)
    assert stage_world.job(job_id).state is S.TERMINATING
    assert stage_world.attempt(job_id).terminate_started_at is not None
    assert stage_world.deliver(terminate, job_id).value["state"] == "SUCCEEDED"
    assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATED


def test_confirmation_is_bounded_by_its_deadline(stage_world: StageWorld) -> None:
    job_id, instance = _collected(stage_world)
    stage_world.store.update_attempt(job_id, 1, terminate_started_at=ago(CONFIRM_TIMEOUT_S + 1))
    stage_world.provider.fail_next("terminate", ProviderError("503"))
    delivery = stage_world.deliver(terminate, job_id)
    assert (delivery.state, delivery.value["state"]) == ("SUCCESS", "SUCCEEDED")
    assert stage_world.instance(instance.instance_id).state is not InstanceState.TERMINATED


def test_a_failed_job_ends_its_chain_here_with_its_result(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    instance = stage_world.launch(job_id, S.TRAINING)
    stage_world.store.transition(job_id, 1, S.FAILED, reason="supervise_training: boom")
    delivery = stage_world.deliver(terminate, job_id)
    assert delivery.state == "SUCCESS"
    assert (delivery.value["state"], delivery.value["reason"]) == (
        "FAILED",
        "supervise_training: boom",
    )
    assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATED


def test_every_attempts_instance_is_terminated(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    first = stage_world.launch(job_id, S.TRAINING)
    stage_world.store.transition(job_id, 1, S.PREEMPTED)
    second = stage_world.launch(job_id, S.COLLECTING)
    stage_world.store.transition(job_id, 2, S.TERMINATING)
    assert stage_world.deliver(terminate, job_id).value["attempts"] == 2
    for instance in (first, second):
        assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATED


def test_a_duplicate_terminate_returns_the_same_result_and_terminates_nothing_twice(
    stage_world: StageWorld,
) -> None:
    job_id, _ = _collected(stage_world)
    first = stage_world.deliver(terminate, job_id)
    calls = dict(stage_world.provider.calls)
    again = stage_world.deliver(terminate, job_id)
    assert again.value == first.value
    assert stage_world.provider.calls == calls
