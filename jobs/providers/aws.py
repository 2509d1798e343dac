"""AWS EC2 behind the `Provider` protocol (boto3): spot (one-time, terminate on interruption)
or on-demand GPU instances, launched idempotently per attempt, listed by our tags, read back
with the reason they ended.

- Credentials come only from boto3's default chain (environment, AWS_PROFILE, SSO, instance
  role); AWS_ENDPOINT_URL works as in boto3. Nothing here stores, logs or prints them.
- Our instance ids are `<region>.<ec2 id>` (EC2 ids are regional), e.g.
  `us-east-1.i-0123456789abcdef0`.
- Launch is idempotent per attempt: the Name tag is looked up first, and `run_instances` carries
  a ClientToken derived from the name and the placement, so a retried call whose reply was lost
  returns the instance the first one started instead of a second one. botocore retries every
  other call (throttling, 5xx, connection errors) with backoff; `run_instances` it does not,
  because EC2 answers capacity errors with HTTP 500.
- Capacity: a region is tried zone by zone; CapacityError once every zone refused (the
  provision stage then moves on to the next region and type).
- Interruptions: an instance that ended with StateReason `Server.SpotInstanceTermination` is
  PREEMPTED; any other end (ours: `Client.UserInitiatedShutdown`) is TERMINATED.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import threading
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import boto3

from jobs.catalog import AWS_CATALOG
from jobs.providers.aws_account import ensure_key_pair, ensure_security_group, resolve_image
from jobs.providers.aws_errors import call, client_config
from jobs.providers.aws_pricing import latest_spot_prices
from jobs.providers.aws_wire import (
    LIVE_STATES,
    PRICE_TAG,
    TAG_PREFIX,
    split_instance_id,
    to_instance,
)
from jobs.providers.base import INSTANCE_NAME_PREFIX, Instance, InstanceType, LaunchRequest
from jobs.providers.errors import CapacityError, InvalidRequest, NotFound
from jobs.providers.notice import NoticeChannel

if TYPE_CHECKING:
    from queue_app.jobspec import ProviderSpec

log = logging.getLogger(__name__)

DEFAULT_REGIONS = ("us-east-1", "us-east-2", "us-west-2")
SSH_CIDRS_HELP = (
    "provider.ssh_cidrs is not set: saefleet opens SSH only to the addresses you list; add the "
    "control plane's public address, e.g. `ssh_cidrs: [203.0.113.7/32]` "
    "(find it with `curl https://checkip.amazonaws.com`)"
)


def client_token(request: LaunchRequest, zone: str) -> str:
    """The same launch (name, type, zone, capacity) always sends the same token."""
    key = f"{request.name}|{request.instance_type}|{zone}|{request.capacity}"
    return hashlib.sha256(key.encode()).hexdigest()[:64]


class AWSProvider:
    """EC2 in a set of regions, implementing `Provider` (see the module docstring)."""

    name = "aws"

    def __init__(
        self,
        regions: builtins.list[str] | None = None,
        *,
        instance_types: builtins.list[str] | None = None,
        ssh_cidrs: builtins.list[str] | None = None,
        ami: str | None = None,
        max_spot_price: float | None = None,
        session: boto3.session.Session | None = None,
        metadata_url: str = "http://169.254.169.254",
    ) -> None:
        self.regions = list(regions or DEFAULT_REGIONS)
        self.allowed_types = list(instance_types or [e.name for e in AWS_CATALOG.entries])
        self.ssh_cidrs = list(ssh_cidrs or [])
        self.ami = ami
        self.max_spot_price = max_spot_price
        self._session = session or boto3.session.Session()
        self.metadata_url = metadata_url
        self._clients: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ProviderSpec, metadata_url: str | None = None) -> AWSProvider:
        return cls(
            spec.regions,
            instance_types=spec.instance_types,
            ssh_cidrs=spec.ssh_cidrs,
            ami=spec.ami,
            max_spot_price=spec.max_spot_price,
            **({"metadata_url": metadata_url} if metadata_url else {}),
        )

    def __repr__(self) -> str:
        return f"AWSProvider(regions={self.regions!r}, ssh_cidrs={self.ssh_cidrs!r})"

    def client(self, service: str, region: str, max_attempts: int = 8) -> Any:
        """One boto3 client per service, region and retry budget (clients are thread-safe)."""
        with self._lock:
            key = (service, region, max_attempts)
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    service, region_name=region, config=client_config(max_attempts)
                )
            return self._clients[key]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def available_regions(self) -> builtins.list[str]:
        """EC2's regions as botocore knows them (no call)."""
        return builtins.list(self._session.get_available_regions("ec2"))

    def _ec2(self, region: str) -> Any:
        return self.client("ec2", region)

    # ---- Provider --------------------------------------------------------------------------

    def instance_types(self) -> builtins.list[InstanceType]:
        """The catalog's types the sweep allows, on-demand price from the catalog, spot price
        live (the cheapest zone of the listed regions), regions: those that offer the type."""
        offered: dict[str, builtins.list[str]] = {}
        spot: dict[str, float] = {}
        for region in self.regions:
            for name in self.offered_types(region):
                offered.setdefault(name, []).append(region)
            for name, price in latest_spot_prices(self._ec2(region), self.allowed_types).items():
                spot[name] = min(price, spot.get(name, price))
        return [
            itype.model_copy(
                update={
                    "regions": offered.get(itype.name, []),
                    "spot_price_per_hour": spot.get(itype.name),
                }
            )
            for itype in AWS_CATALOG.instance_types()
            if itype.name in self.allowed_types
        ]

    def offered_types(self, region: str) -> builtins.list[str]:
        """Which of the allowed types `region` offers at all."""
        return sorted(
            {o["InstanceType"] for o in self._offerings(region, "region", self.allowed_types)}
        )

    def launch(self, request: LaunchRequest) -> Instance:
        """Launch `request.name` in `request.region` (its zones in turn), or return the live
        instance that already carries the name."""
        if not self.ssh_cidrs:
            raise InvalidRequest(SSH_CIDRS_HELP)
        region = request.region
        existing = self._find_named(region, request.name)
        if existing is not None:
            log.info("aws: %s already exists as %s", request.name, existing.id)
            return existing
        ec2 = self._ec2(region)
        key_name = ensure_key_pair(ec2, request.ssh_key_name, request.ssh_public_key)
        group_id = ensure_security_group(ec2, self.ssh_cidrs)
        image, root_device = resolve_image(ec2, self.client("ssm", region), self.ami)
        zones = sorted(
            o["Location"]
            for o in self._offerings(region, "availability-zone", [request.instance_type])
        )
        price = self._price(region, request)
        # Not retried by botocore: EC2 answers capacity errors with HTTP 500, which its standard
        # mode would retry; a lost reply is retried by the caller (Name lookup, same token).
        launcher = self.client("ec2", region, max_attempts=1)
        refused = []
        for zone in zones:
            params = self._run_params(request, zone, key_name, group_id, image, root_device, price)
            try:
                reply = call("RunInstances", partial(launcher.run_instances, **params))
            except CapacityError as exc:
                refused.append(f"{zone}: {exc}")
                continue
            instance = to_instance(reply["Instances"][0], region)
            log.info(
                "aws: launched %s as %s (%s %s in %s)",
                request.name,
                instance.id,
                request.capacity,
                request.instance_type,
                zone,
            )
            return instance
        raise CapacityError(
            f"AWS: no {request.capacity} capacity for {request.instance_type} in {region} "
            f"({'; '.join(refused) or 'no zone offers the type'})"
        )

    def get(self, instance_id: str) -> Instance:
        region, ec2_id = split_instance_id(instance_id)
        ec2 = self._ec2(region)
        reply = call("DescribeInstances", lambda: ec2.describe_instances(InstanceIds=[ec2_id]))
        found = [i for r in reply.get("Reservations", []) for i in r.get("Instances", [])]
        if not found:
            raise NotFound(f"AWS has no instance {instance_id}")
        return to_instance(found[0], region)

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        """Instances not terminated, in every region; ours (Name tag with our prefix) only
        unless told."""
        filters = [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        if not include_foreign:
            filters.append({"Name": "tag:Name", "Values": [f"{INSTANCE_NAME_PREFIX}*"]})
        return [i for region in self.regions for i in self._describe(region, filters)]

    def terminate(self, instance_id: str) -> None:
        """Terminate; an instance that is gone already (or unknown to AWS) is success."""
        try:
            region, ec2_id = split_instance_id(instance_id)
            ec2 = self._ec2(region)
            call("TerminateInstances", lambda: ec2.terminate_instances(InstanceIds=[ec2_id]))
        except NotFound:
            log.info("aws: %s is already gone", instance_id)
            return
        log.info("aws: terminating %s", instance_id)

    def notice_channel(self, workdir: str) -> NoticeChannel:
        """Instance metadata (IMDSv2): spot/instance-action and rebalance recommendations."""
        return NoticeChannel(kind="imds", location=self.metadata_url)

    # ---- internals -------------------------------------------------------------------------

    def _describe(self, region: str, filters: builtins.list[dict[str, Any]]) -> Iterator[Instance]:
        pages = self._ec2(region).get_paginator("describe_instances").paginate(Filters=filters)
        for page in call("DescribeInstances", lambda: builtins.list(pages)):
            for reservation in page.get("Reservations", []):
                for wire in reservation.get("Instances", []):
                    yield to_instance(wire, region)

    def _find_named(self, region: str, name: str) -> Instance | None:
        filters = [
            {"Name": "tag:Name", "Values": [name]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        return next(iter(self._describe(region, filters)), None)

    def _offerings(
        self, region: str, location: str, types: builtins.list[str]
    ) -> builtins.list[dict[str, Any]]:
        ec2 = self._ec2(region)
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType=location, Filters=[{"Name": "instance-type", "Values": types}]
        )
        return [
            offering
            for page in call("DescribeInstanceTypeOfferings", lambda: builtins.list(pages))
            for offering in page.get("InstanceTypeOfferings", [])
        ]

    def _price(self, region: str, request: LaunchRequest) -> float:
        """What the instance will cost per hour (tagged on it, read back by get/list)."""
        entry = next((e for e in AWS_CATALOG.entries if e.name == request.instance_type), None)
        if entry is None:
            raise InvalidRequest(f"instance type {request.instance_type}: not in the AWS catalog")
        if request.capacity == "on_demand":
            return entry.price_per_hour
        spot = latest_spot_prices(self._ec2(region), [request.instance_type])
        return spot.get(request.instance_type, entry.price_per_hour)

    def _run_params(
        self,
        request: LaunchRequest,
        zone: str,
        key_name: str,
        group_id: str,
        image: str,
        root_device: str,
        price: float,
    ) -> dict[str, Any]:
        tags = {"Name": request.name, PRICE_TAG: f"{price:.6f}"}
        tags |= {f"{TAG_PREFIX}{k}": v for k, v in request.labels.items()}
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": request.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": key_name,
            "SecurityGroupIds": [group_id],
            "Placement": {"AvailabilityZone": zone},
            "ClientToken": client_token(request, zone),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": request.disk_gb,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if request.capacity == "spot":
            options: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if self.max_spot_price is not None:
                options["MaxPrice"] = f"{self.max_spot_price:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        return params
