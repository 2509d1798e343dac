"""What EC2 replies mean in our types: instance states and the reason an instance ended, our
instance ids (`<region>.<EC2 id>`, since EC2 ids are regional), and the tags we read back."""

from __future__ import annotations

from typing import Any

from jobs.providers.base import Capacity, Instance, InstanceStatus
from jobs.providers.errors import NotFound

SPOT_TERMINATION = "Server.SpotInstanceTermination"
SSH_USER = "ubuntu"
WORKDIR = "/home/ubuntu/saefleet"
TAG_PREFIX = "saefleet:"
PRICE_TAG = f"{TAG_PREFIX}price_per_hour"
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
_STATUS = {
    "pending": InstanceStatus.BOOTING,
    "running": InstanceStatus.ACTIVE,
    "shutting-down": InstanceStatus.TERMINATING,
    "terminated": InstanceStatus.TERMINATED,
    "stopping": InstanceStatus.UNHEALTHY,
    "stopped": InstanceStatus.UNHEALTHY,
}


def instance_id(region: str, ec2_id: str) -> str:
    return f"{region}.{ec2_id}"


def split_instance_id(our_id: str) -> tuple[str, str]:
    """(region, EC2 id) of one of our ids; NotFound for anything else."""
    region, _, ec2_id = our_id.partition(".")
    if not region or not ec2_id.startswith("i-"):
        raise NotFound(f"{our_id!r} is not an AWS instance id of saefleet (<region>.i-...)")
    return region, ec2_id


def to_instance(wire: dict[str, Any], region: str) -> Instance:
    """Our view of one `describe_instances`/`run_instances` instance."""
    status = _STATUS.get(wire["State"]["Name"], InstanceStatus.UNHEALTHY)
    reason = (wire.get("StateReason") or {}).get("Code", "")
    if status in (InstanceStatus.TERMINATING, InstanceStatus.TERMINATED) and (
        reason == SPOT_TERMINATION
    ):
        status = InstanceStatus.PREEMPTED
    tags = {t["Key"]: t["Value"] for t in wire.get("Tags", [])}
    capacity: Capacity = "spot" if wire.get("InstanceLifecycle") == "spot" else "on_demand"
    return Instance(
        id=instance_id(region, wire["InstanceId"]),
        name=tags.get("Name", ""),
        status=status,
        instance_type=wire["InstanceType"],
        region=region,
        capacity=capacity,
        price_per_hour=float(tags.get(PRICE_TAG, 0.0)),
        host=wire.get("PublicIpAddress") or None,
        ssh_user=SSH_USER,
        workdir=WORKDIR,
    )
