"""AWS for tests: moto's server in this process on a free loopback port (one per test process,
its state reset after each test), reached by boto3 through AWS_ENDPOINT_URL, plus what moto
cannot do by itself.

    def test_x(moto_aws: MotoAWS) -> None:   # import the fixtures moto_server and moto_aws
        provider = AWSProvider(["us-east-1"], ssh_cidrs=[...], session=shared_session())
        moto_aws.refuse_capacity(provider, "us-east-1", {"us-east-1a"})  # RunInstances fails there
        moto_aws.lose_reply(provider, "us-east-1")  # the next RunInstances acts, its reply is lost
        moto_aws.interrupt(instance.id)             # AWS reclaims the spot instance

- Capacity errors: a botocore `before-call.ec2.RunInstances` hook answers
  InsufficientInstanceCapacity (HTTP 500, as EC2 does) for the zones named.
- A lost reply: an `after-call.ec2.RunInstances` hook raises a ReadTimeoutError after the
  instance was created.
- An interruption: the instance's state and StateReason set in moto's backend, as AWS reports a
  reclaimed spot instance.
- The Deep Learning AMI's public SSM parameter (AWS's own namespace, which moto's API refuses
  to write) is put into moto's SSM backend, pointing at an Ubuntu image moto knows.

Registered as a plugin by tests/conftest.py; moto and boto3 load only when a test uses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from queue_app.processes import free_port

if TYPE_CHECKING:
    import boto3

    from jobs.providers.aws import AWSProvider

UBUNTU_AMI = "ami-1e749f67"
FAKE_ACCESS_KEY = "AKIAFAKEFAKEFAKE1234"
FAKE_SECRET_KEY = "fake-secret-never-in-logs-0123456789abcdef"
REGIONS = ("us-east-1", "us-west-2")


@dataclass
class MotoAWS:
    """A running moto server and the faults tests switch on."""

    endpoint: str
    refused_zones: set[str] = field(default_factory=set)
    lost_replies: int = 0
    run_requests: list[dict[str, Any]] = field(default_factory=list)
    """The query parameters of every RunInstances sent through a hooked client."""

    def hook(self, provider: AWSProvider, region: str) -> None:
        """Install the fault hooks on the provider's EC2 launch client for `region`."""
        events = provider.client("ec2", region, max_attempts=1).meta.events
        events.register("before-call.ec2.RunInstances", self._before_run, "saefleet-faults-before")
        events.register("after-call.ec2.RunInstances", self._after_run, "saefleet-faults-after")

    def refuse_capacity(self, provider: AWSProvider, region: str, zones: set[str]) -> None:
        self.hook(provider, region)
        self.refused_zones |= zones

    def lose_reply(self, provider: AWSProvider, region: str, count: int = 1) -> None:
        self.hook(provider, region)
        self.lost_replies += count

    def _before_run(self, params: dict[str, Any], **_: Any) -> Any:
        body = dict(params.get("body") or {})
        self.run_requests.append(body)
        zone = body.get("Placement.AvailabilityZone")
        if zone not in self.refused_zones:
            return None
        error = {
            "Error": {
                "Code": "InsufficientInstanceCapacity",
                "Message": f"We currently do not have sufficient capacity in {zone}.",
            },
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }
        return SimpleNamespace(status_code=500, headers={}, content=b""), error

    def _after_run(self, **_: Any) -> None:
        from botocore.exceptions import ReadTimeoutError

        if self.lost_replies > 0:
            self.lost_replies -= 1
            raise ReadTimeoutError(endpoint_url=self.endpoint)

    def interrupt(self, our_id: str) -> None:
        """Reclaim a spot instance as AWS does: terminated, StateReason spot termination."""
        from moto.ec2.models.instances import StateReason

        instance = self._instance(our_id)
        instance._state.name = "terminated"
        instance._state.code = 48
        instance.state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination",
            "Server.SpotInstanceTermination",
        )

    def _instance(self, our_id: str) -> Any:
        from jobs.providers.aws_wire import split_instance_id

        region, ec2_id = split_instance_id(our_id)
        return _ec2_backend(region).get_instance(ec2_id)

    def instances_named(self, name: str, region: str) -> list[Any]:
        backend = _ec2_backend(region)
        return [
            i
            for reservation in backend.reservations.values()
            for i in reservation.instances
            if backend.tags.get(i.id, {}).get("Name") == name
        ]


def _ec2_backend(region: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    return ec2_backends[DEFAULT_ACCOUNT_ID][region]


def _publish_dlami(region: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ssm.models import Parameter, ssm_backends

    from jobs.providers.aws_account import DLAMI_PARAMETER

    parameters = ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters
    parameters[DLAMI_PARAMETER].append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=DLAMI_PARAMETER,
            value=UBUNTU_AMI,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=utcnow(),
            version=1,
            data_type="aws:ec2:image",
        )
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, one per test process; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoAWS]:
    """AWS for one test: the process's moto server with fake credentials in the environment,
    the DLAMI parameter published; every resource is forgotten at the end."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    try:
        for region in REGIONS:
            _publish_dlami(region)
        yield MotoAWS(moto_server)
    finally:
        from moto.ec2.models import ec2_backends
        from moto.ssm.models import ssm_backends

        ec2_backends.reset()
        ssm_backends.reset()


_session: boto3.session.Session | None = None


def shared_session() -> boto3.session.Session:
    """One boto3 session for the tests of a process (loading botocore's models takes ~1 s
    per session); the environment of `moto_aws` is the same in every test."""
    global _session  # noqa: PLW0603
    if _session is None:
        import boto3

        _session = boto3.session.Session()
    return _session
