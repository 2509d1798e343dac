"""What an AWS launch needs to exist in a region first: the fleet's SSH key imported as a key
pair, a security group admitting SSH only from the configured CIDRs, and the image (the AWS
Deep Learning AMI from its public SSM parameter unless the sweep names one) with its root
device. Each is made once, named after what it holds, so every process of the fleet finds the
same one and a race between two of them ends with one object, not an error.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from typing import Any

from jobs.providers.aws_errors import call
from jobs.providers.errors import InvalidRequest

log = logging.getLogger(__name__)

DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
"""The public SSM parameter naming the newest Deep Learning Base OSS Nvidia Driver GPU AMI
(Ubuntu 22.04) of a region."""
SSH_PORT = 22


def _digest(text: str, length: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def key_pair_name(base: str, public_key: str) -> str:
    """`<base>-<digest of the key>`: a key pair of that name holds exactly this key."""
    return f"{base}-{_digest(' '.join(public_key.split()[:2]))}"


def security_group_name(cidrs: list[str]) -> str:
    """`saefleet-ssh-<digest of the CIDRs>`: a group of that name admits exactly them."""
    return f"saefleet-ssh-{_digest(','.join(sorted(cidrs)))}"


def ensure_key_pair(ec2: Any, base: str, public_key: str) -> str:
    """Import `public_key` unless the region has it; returns the key pair's name."""
    name = key_pair_name(base, public_key)
    found = call(
        "DescribeKeyPairs",
        lambda: ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}]),
    )
    if found.get("KeyPairs"):
        return name
    try:
        call(
            "ImportKeyPair",
            lambda: ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode()),
        )
        log.info("aws: imported SSH key pair %s", name)
    except InvalidRequest as exc:  # InvalidKeyPair.Duplicate: imported meanwhile
        if "Duplicate" not in str(exc):
            raise
    return name


def ensure_security_group(ec2: Any, cidrs: list[str]) -> str:
    """The id of a group (default VPC) admitting TCP 22 from `cidrs` and nothing else."""
    name = security_group_name(cidrs)
    group_id = _group_named(ec2, name)
    if group_id is not None:
        return group_id
    try:
        created = call(
            "CreateSecurityGroup",
            lambda: ec2.create_security_group(
                GroupName=name, Description=f"saefleet: SSH from {', '.join(sorted(cidrs))}"
            ),
        )
    except InvalidRequest as exc:  # InvalidGroup.Duplicate: created meanwhile
        group_id = _group_named(ec2, name)
        if "Duplicate" not in str(exc) or group_id is None:
            raise
        return group_id
    group_id = str(created["GroupId"])
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in cidrs if ipaddress.ip_network(c).version == 6]
    permission = {
        "IpProtocol": "tcp",
        "FromPort": SSH_PORT,
        "ToPort": SSH_PORT,
        "IpRanges": [{"CidrIp": c, "Description": "saefleet SSH"} for c in v4],
        "Ipv6Ranges": [{"CidrIpv6": c, "Description": "saefleet SSH"} for c in v6],
    }
    call(
        "AuthorizeSecurityGroupIngress",
        lambda: ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[permission]),
    )
    log.info("aws: created security group %s (%s) for SSH from %s", name, group_id, cidrs)
    return group_id


def _group_named(ec2: Any, name: str) -> str | None:
    found = call(
        "DescribeSecurityGroups",
        lambda: ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}]),
    )
    groups = found.get("SecurityGroups", [])
    return str(groups[0]["GroupId"]) if groups else None


def resolve_image(ec2: Any, ssm: Any, ami: str | None) -> tuple[str, str]:
    """(image id, root device name): `ami`, else the region's Deep Learning AMI."""
    if ami is None:
        reply = call("GetParameter", lambda: ssm.get_parameter(Name=DLAMI_PARAMETER))
        ami = str(reply["Parameter"]["Value"])
    chosen = ami
    images = call("DescribeImages", lambda: ec2.describe_images(ImageIds=[chosen])).get("Images")
    if not images:
        raise InvalidRequest(f"provider.ami: image {chosen} does not exist in this region")
    return chosen, str(images[0].get("RootDeviceName") or "/dev/sda1")
