"""The AWS provider against moto's server (tests/support/moto_aws.py): what it launches and how,
idempotency, capacity failover across zones, interruptions, listing by tags, and the error map."""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from jobs.providers import (
    AuthError,
    CapacityError,
    InstanceStatus,
    InvalidRequest,
    LaunchRequest,
    NotFound,
    PermanentProviderError,
    ProviderError,
    QuotaError,
    RateLimited,
    instance_name,
)
from jobs.providers.aws import AWSProvider
from jobs.providers.aws_account import key_pair_name, security_group_name
from jobs.providers.aws_errors import map_error
from jobs.providers.aws_wire import split_instance_id
from jobs.stages import provision
from tests.jobs.stage_world import StageWorld
from tests.support.moto_aws import (
    FAKE_SECRET_KEY,
    UBUNTU_AMI,
    MotoAWS,
    shared_session,
)

REGION = "us-east-1"
CIDRS = ["203.0.113.7/32"]
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"


@pytest.fixture
def aws(moto_aws: MotoAWS) -> MotoAWS:
    return moto_aws


def aws_provider(regions: list[str] | None = None, **options: Any) -> AWSProvider:
    return AWSProvider(regions or [REGION], session=shared_session(), **options)


@pytest.fixture
def provider(aws: MotoAWS) -> AWSProvider:
    return aws_provider(ssh_cidrs=CIDRS)


def request(name: str = "sf-sw1-0000-1", **fields: object) -> LaunchRequest:
    values: dict[str, object] = {
        "name": name,
        "instance_type": "g5.xlarge",
        "region": REGION,
        "capacity": "spot",
        "ssh_public_key": PUBLIC_KEY,
        "disk_gb": 321,
        "labels": {"job": "sw1-0000", "attempt": "1", "sweep": "sw1"},
    }
    return LaunchRequest.model_validate(values | fields)


def describe(provider: AWSProvider, our_id: str) -> dict[str, object]:
    region, ec2_id = split_instance_id(our_id)
    reply = provider.client("ec2", region).describe_instances(InstanceIds=[ec2_id])
    return dict(reply["Reservations"][0]["Instances"][0])


def test_spot_launch_tags_sizes_keys_and_opens_ssh_only_to_the_cidrs(
    aws: MotoAWS, provider: AWSProvider
) -> None:
    aws.hook(provider, REGION)
    instance = provider.launch(request())
    assert instance.id.startswith(f"{REGION}.i-")
    assert (instance.capacity, instance.instance_type) == ("spot", "g5.xlarge")
    wire = describe(provider, instance.id)
    tags = {t["Key"]: t["Value"] for t in wire["Tags"]}  # type: ignore[attr-defined]
    assert tags["Name"] == "sf-sw1-0000-1"
    assert (tags["saefleet:job"], tags["saefleet:attempt"], tags["saefleet:sweep"]) == (
        "sw1-0000",
        "1",
        "sw1",
    )
    assert wire["ImageId"] == UBUNTU_AMI  # the DLAMI's SSM parameter
    assert wire["KeyName"] == key_pair_name("saefleet", PUBLIC_KEY)
    sent = aws.run_requests[-1]
    assert sent["InstanceMarketOptions.MarketType"] == "spot"
    assert sent["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert sent["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    assert "InstanceMarketOptions.SpotOptions.MaxPrice" not in sent
    assert sent["BlockDeviceMapping.1.Ebs.VolumeSize"] == 321
    assert sent["MetadataOptions.HttpTokens"] == "required"
    ec2 = provider.client("ec2", REGION)
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [security_group_name(CIDRS)]}]
    )["SecurityGroups"][0]
    [rule] = group["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"]) == (22, 22)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == CIDRS


def test_on_demand_sends_no_market_options_and_a_max_price_only_when_set(aws: MotoAWS) -> None:
    plain = aws_provider(ssh_cidrs=CIDRS)
    aws.hook(plain, REGION)
    plain.launch(request("sf-a-1", capacity="on_demand"))
    assert not any(k.startswith("InstanceMarketOptions") for k in aws.run_requests[-1])
    capped = aws_provider(ssh_cidrs=CIDRS, max_spot_price=0.5)
    aws.hook(capped, REGION)
    capped.launch(request("sf-b-1"))
    assert aws.run_requests[-1]["InstanceMarketOptions.SpotOptions.MaxPrice"] == "0.5000"


def test_launch_refuses_until_ssh_cidrs_are_set_and_says_how(aws: MotoAWS) -> None:
    provider = aws_provider()
    aws.hook(provider, REGION)
    with pytest.raises(InvalidRequest, match=r"provider\.ssh_cidrs is not set"):
        provider.launch(request())
    assert aws.run_requests == []


def test_a_lost_reply_never_starts_a_second_instance(aws: MotoAWS, provider: AWSProvider) -> None:
    aws.lose_reply(provider, REGION)
    with pytest.raises(ProviderError) as lost:
        provider.launch(request())
    assert lost.value.retryable
    again = provider.launch(request())
    assert provider.launch(request()).id == again.id
    assert len(aws.instances_named("sf-sw1-0000-1", REGION)) == 1
    assert len(aws.run_requests) == 1


def test_no_capacity_in_a_zone_moves_to_the_next_then_fails_for_the_region(
    aws: MotoAWS, provider: AWSProvider
) -> None:
    aws.refuse_capacity(provider, REGION, {f"{REGION}a"})
    instance = provider.launch(request())
    assert describe(provider, instance.id)["Placement"]["AvailabilityZone"] != f"{REGION}a"  # type: ignore[index]
    zones = {r["Placement.AvailabilityZone"] for r in aws.run_requests}
    aws.refuse_capacity(provider, REGION, {z for z in _zones(provider)})
    with pytest.raises(CapacityError, match="InsufficientInstanceCapacity") as refused:
        provider.launch(request("sf-sw1-0000-2"))
    assert refused.value.retryable
    assert f"{REGION}a" in zones


def _zones(provider: AWSProvider) -> list[str]:
    reply = provider.client("ec2", REGION).describe_availability_zones()
    return [z["ZoneName"] for z in reply["AvailabilityZones"]]


def test_a_spot_interruption_is_preempted_and_our_termination_is_not(
    aws: MotoAWS, provider: AWSProvider
) -> None:
    reclaimed = provider.launch(request("sf-a-1"))
    ours = provider.launch(request("sf-b-1"))
    aws.interrupt(reclaimed.id)
    provider.terminate(ours.id)
    provider.terminate(ours.id)  # twice: still success
    assert provider.get(reclaimed.id).status is InstanceStatus.PREEMPTED
    assert provider.get(ours.id).status is InstanceStatus.TERMINATED
    assert provider.list() == []


def test_list_shows_our_live_instances_and_foreign_ones_only_when_asked(
    aws: MotoAWS, provider: AWSProvider
) -> None:
    mine = provider.launch(request("sf-a-1"))
    ec2 = provider.client("ec2", REGION)
    ec2.run_instances(ImageId=UBUNTU_AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    assert [i.id for i in provider.list()] == [mine.id]
    assert len(provider.list(include_foreign=True)) == 2
    assert provider.get(mine.id).price_per_hour > 0


def test_unknown_ids_are_not_found_and_terminating_them_is_success(provider: AWSProvider) -> None:
    with pytest.raises(NotFound):
        provider.get("us-east-1.i-0123456789abcdef0")
    with pytest.raises(NotFound):
        provider.get("local-1234")
    provider.terminate("us-east-1.i-0123456789abcdef0")


def test_instance_types_are_the_catalog_with_live_spot_prices_and_offering_regions(
    aws: MotoAWS,
) -> None:
    provider = aws_provider(["us-east-1", "us-west-2"], instance_types=["g5.xlarge", "p5.48xlarge"])
    types = {t.name: t for t in provider.instance_types()}
    assert set(types) == {"g5.xlarge", "p5.48xlarge"}
    assert types["g5.xlarge"].regions == ["us-east-1", "us-west-2"]
    assert types["g5.xlarge"].spot_price_per_hour is not None
    assert types["p5.48xlarge"].gpu_memory_gb == 80


def test_missing_credentials_are_an_auth_error_saying_how(
    aws: MotoAWS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError, match="AWS_PROFILE"):
        AWSProvider([REGION], session=boto3.session.Session()).list()


def test_credentials_reach_no_repr_log_or_error(
    aws: MotoAWS, provider: AWSProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jobs")
    instance = provider.launch(request())
    provider.terminate(instance.id)
    aws.refuse_capacity(provider, REGION, set(_zones(provider)))
    with pytest.raises(CapacityError) as refused:
        provider.launch(request("sf-x-1"))
    for text in (repr(provider), caplog.text, str(refused.value), repr(instance)):
        assert FAKE_SECRET_KEY not in text


def _client_error(code: str, status: int = 400) -> ClientError:
    meta = {"HTTPStatusCode": status}
    reply = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": meta}
    return ClientError(reply, "RunInstances")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("InsufficientInstanceCapacity", 500), CapacityError),
        (_client_error("SpotMaxPriceTooLow"), CapacityError),
        (_client_error("MaxSpotInstanceCountExceeded"), CapacityError),
        (_client_error("UnfulfillableCapacity"), CapacityError),
        (_client_error("AuthFailure", 401), AuthError),
        (_client_error("UnauthorizedOperation", 403), AuthError),
        (_client_error("RequestLimitExceeded", 503), RateLimited),
        (_client_error("VcpuLimitExceeded"), QuotaError),
        (_client_error("InvalidInstanceID.NotFound"), NotFound),
        (_client_error("InvalidParameterValue"), InvalidRequest),
        (_client_error("InternalError", 500), ProviderError),
        (_client_error("SomethingNew", 400), PermanentProviderError),
        (NoCredentialsError(), AuthError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ProviderError),
    ],
)
def test_errors_map_at_the_boundary(error: Exception, expected: type[ProviderError]) -> None:
    mapped = map_error(error, "RunInstances")
    assert type(mapped) is expected
    assert mapped.retryable == (expected in (CapacityError, RateLimited, ProviderError))


def test_the_provision_stage_fails_over_to_the_next_region_and_tags_the_attempt(
    aws: MotoAWS, stage_world: StageWorld
) -> None:
    provider = aws_provider(
        ["us-east-1", "us-west-2"], ssh_cidrs=CIDRS, instance_types=["g6.xlarge"]
    )
    stage_world.provider = provider  # type: ignore[assignment]
    aws.refuse_capacity(provider, "us-east-1", set(_zones(provider)))
    job_id = stage_world.sweep(disk_gb=123)
    assert stage_world.deliver(provision, job_id) == stage_world.passed_on(job_id)
    [instance] = provider.list()
    assert (instance.region, instance.capacity) == ("us-west-2", "spot")
    assert stage_world.attempt(job_id).instance_id == instance.id
    tags = {t["Key"]: t["Value"] for t in describe(provider, instance.id)["Tags"]}  # type: ignore[attr-defined]
    assert (tags["Name"], tags["saefleet:job"], tags["saefleet:attempt"]) == (
        instance_name(job_id, 1),
        job_id,
        "1",
    )
    tried = [r["Placement.AvailabilityZone"] for r in aws.run_requests]  # us-east-1's client
    assert len(tried) > 1 and set(tried) <= set(_zones(provider))  # each offering zone refused
