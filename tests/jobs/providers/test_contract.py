"""One contract every provider keeps, checked on each: local (real sshd instances), lambda (the
fake Lambda API over HTTP, tests/support/fake_lambda.py) and aws (moto's server,
tests/support/moto_aws.py).

A `World` is one provider plus the faults its stand-in can raise: a launch whose reply is
lost, no capacity, and the cloud reclaiming an instance."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from jobs.providers import (
    INSTANCE_NAME_PREFIX,
    CapacityError,
    InstanceStatus,
    LaunchRequest,
    NotFound,
    Provider,
    ProviderError,
)
from jobs.providers.aws import AWSProvider
from jobs.providers.lambda_api import RetryPolicy
from jobs.providers.lambda_cloud import LambdaCloud
from jobs.providers.local import INSTANCE_TYPE, REGION, LocalProvider
from jobs.providers.pacing import Pacer, Rate
from tests.support.fake_lambda import running_fake_lambda
from tests.support.moto_aws import (
    FAKE_SECRET_KEY,
    MotoAWS,
    shared_session,
)
from tests.support.waiting import wait_for

PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl contract"
)
PROVIDERS = ["local", "lambda", "aws"]
WITH_CREDENTIALS = ["lambda", "aws"]  # the local provider holds none


@dataclass
class World:
    provider: Provider
    placement: dict[str, str]
    """instance_type and region a launch asks for."""
    lose_next_launch_reply: Callable[[], None]
    refuse_capacity: Callable[[], None]
    interrupt: Callable[[str], None]
    count_named: Callable[[str], int]
    """How many instances the cloud started with this name."""
    secret: str | None

    def request(self, name: str) -> LaunchRequest:
        return LaunchRequest(
            name=name, capacity="spot", ssh_public_key=PUBLIC_KEY, **self.placement
        )


def _local(stack: ExitStack, fixture: Callable[[str], Any]) -> World:
    provider: LocalProvider = fixture("make_local_provider")()

    def count_named(name: str) -> int:
        return sum(1 for i in provider.list(include_foreign=True) if i.name == name)

    return World(
        provider=provider,
        placement={"instance_type": INSTANCE_TYPE, "region": REGION},
        lose_next_launch_reply=lambda: None,  # in process: the test drops the reply itself
        refuse_capacity=provider.refuse_capacity,
        interrupt=provider.preempt,
        count_named=count_named,
        secret=None,
    )


def _lambda(stack: ExitStack, fixture: Callable[[str], Any]) -> World:
    api = stack.enter_context(running_fake_lambda())
    retry = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05, jitter_s=0.01, max_total_s=10)
    pacer = Pacer({"request": Rate(0.0), "launch": Rate(0.0)})
    cloud = stack.enter_context(
        LambdaCloud(api.api_key, api.base_url, timeout=0.3, pacer=pacer, retry=retry)
    )
    return World(
        provider=cloud,
        placement={"instance_type": "gpu_1x_a100", "region": "us-west-1"},
        lose_next_launch_reply=lambda: api.slow("instance-operations/launch", delay_s=0.6),
        refuse_capacity=api.no_capacity,
        interrupt=api.preempt,
        count_named=lambda name: sum(1 for i in api.instances.values() if i.name == name),
        secret=api.api_key,
    )


def _aws(stack: ExitStack, fixture: Callable[[str], Any]) -> World:
    aws: MotoAWS = fixture("moto_aws")
    provider = AWSProvider(["us-east-1"], ssh_cidrs=["203.0.113.7/32"], session=shared_session())
    stack.callback(provider.close)
    zones = provider.client("ec2", "us-east-1").describe_availability_zones()
    return World(
        provider=provider,
        placement={"instance_type": "g5.xlarge", "region": "us-east-1"},
        lose_next_launch_reply=lambda: aws.lose_reply(provider, "us-east-1"),
        refuse_capacity=lambda: aws.refuse_capacity(
            provider, "us-east-1", {z["ZoneName"] for z in zones["AvailabilityZones"]}
        ),
        interrupt=aws.interrupt,
        count_named=lambda name: len(aws.instances_named(name, "us-east-1")),
        secret=FAKE_SECRET_KEY,
    )


WORLDS = {"local": _local, "lambda": _lambda, "aws": _aws}


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    with ExitStack() as stack:
        yield WORLDS[request.param](stack, request.getfixturevalue)


def gone_or_unknown(provider: Provider, instance_id: str) -> bool:
    try:
        return provider.get(instance_id).status.gone
    except NotFound:
        return True


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_launch_returns_the_named_instance(world: World) -> None:
    instance = world.provider.launch(world.request("sf-c1-1"))
    assert (instance.name, instance.instance_type) == ("sf-c1-1", world.placement["instance_type"])
    assert world.provider.get(instance.id).id == instance.id
    assert not instance.status.gone


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_a_launch_whose_reply_was_lost_starts_one_instance(world: World) -> None:
    world.lose_next_launch_reply()
    try:
        world.provider.launch(world.request("sf-c1-1"))
    except ProviderError as lost:
        assert lost.retryable
    again = world.provider.launch(world.request("sf-c1-1"))
    assert world.provider.launch(world.request("sf-c1-1")).id == again.id
    assert world.count_named("sf-c1-1") == 1


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_list_shows_our_prefix_and_the_rest_only_when_asked(world: World) -> None:
    ours = world.provider.launch(world.request(f"{INSTANCE_NAME_PREFIX}c1-1"))
    foreign = world.provider.launch(world.request("someone-elses"))
    assert [i.id for i in world.provider.list()] == [ours.id]
    assert {ours.id, foreign.id} <= {i.id for i in world.provider.list(include_foreign=True)}


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_terminate_twice_succeeds_and_the_instance_ends_terminated(world: World) -> None:
    instance = world.provider.launch(world.request("sf-c1-1"))
    world.provider.terminate(instance.id)
    world.provider.terminate(instance.id)
    wait_for("the instance gone", lambda: gone_or_unknown(world.provider, instance.id), 10)
    with contextlib.suppress(NotFound):  # Lambda forgets terminated instances
        assert world.provider.get(instance.id).status is InstanceStatus.TERMINATED
    assert instance.id not in {i.id for i in world.provider.list()}


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_no_capacity_is_a_retryable_capacity_error_and_launches_nothing(world: World) -> None:
    world.refuse_capacity()
    with pytest.raises(CapacityError) as refused:
        world.provider.launch(world.request("sf-c1-1"))
    assert refused.value.retryable
    assert world.count_named("sf-c1-1") == 0


@pytest.mark.parametrize("world", PROVIDERS, indirect=True)
def test_an_interruption_is_preempted_never_terminated(world: World) -> None:
    instance = world.provider.launch(world.request("sf-c1-1"))
    world.interrupt(instance.id)
    assert world.provider.get(instance.id).status is InstanceStatus.PREEMPTED


@pytest.mark.parametrize("world", WITH_CREDENTIALS, indirect=True)
def test_credentials_reach_no_log_repr_or_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    instance = world.provider.launch(world.request("sf-c1-1"))
    world.provider.terminate(instance.id)
    world.refuse_capacity()
    with pytest.raises(CapacityError) as refused:
        world.provider.launch(world.request("sf-c1-2"))
    assert world.secret
    assert caplog.records
    for text in (caplog.text, repr(world.provider), repr(instance), str(refused.value)):
        assert world.secret not in text
