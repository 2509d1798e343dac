"""What the Lambda Cloud API v1 sends and receives, and what it means in our types: the reply
models (pydantic, unknown fields ignored), validation of a reply's `data` (a mismatch is a
malformed reply: a transient ProviderError), and the conversions to `Instance` and
`InstanceType`.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jobs.providers.base import Instance, InstanceStatus, InstanceType
from jobs.providers.errors import ProviderError

SSH_USER = "ubuntu"
WORKDIR = "/home/ubuntu/saefleet"

T = TypeVar("T")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Region(WireModel):
    name: str
    description: str = ""


class _Specs(WireModel):
    vcpus: int = 0
    memory_gib: int = 0
    storage_gib: int = 0
    gpus: int = 0


class _TypeInfo(WireModel):
    name: str
    description: str = ""
    gpu_description: str = ""
    price_cents_per_hour: int
    specs: _Specs = _Specs()


class _TypeOffer(WireModel):
    instance_type: _TypeInfo
    regions_with_capacity_available: list[_Region] = Field(default_factory=list)


class _InstanceWire(WireModel):
    id: str
    name: str | None = None
    ip: str | None = None
    status: InstanceStatus
    region: _Region
    instance_type: _TypeInfo
    ssh_key_names: list[str] = Field(default_factory=list)
    file_system_names: list[str] = Field(default_factory=list)


class _LaunchResult(WireModel):
    instance_ids: list[str] = Field(min_length=1)


class SSHKey(WireModel):
    """An SSH public key registered with the account."""

    id: str
    name: str
    public_key: str = ""


class FileSystem(WireModel):
    """A persistent filesystem; it lives in one region."""

    id: str
    name: str
    region: _Region
    mount_point: str | None = None


class _TerminatedRef(WireModel):
    id: str


class _TerminateResult(WireModel):
    terminated_instances: list[_TerminatedRef] = Field(default_factory=list)


class _ErrorBody(WireModel):
    code: str
    message: str = ""
    suggestion: str | None = None


class ErrorEnvelope(WireModel):
    error: _ErrorBody


class DataEnvelope(WireModel):
    data: Any


# Replies by what they carry; validate a reply's `data` with `parse_reply`.
TYPE_OFFERS = TypeAdapter(dict[str, _TypeOffer])
INSTANCE = TypeAdapter(_InstanceWire)
INSTANCES = TypeAdapter(list[_InstanceWire])
LAUNCH_RESULT = TypeAdapter(_LaunchResult)
TERMINATE_RESULT = TypeAdapter(_TerminateResult)
SSH_KEY = TypeAdapter(SSHKey)
SSH_KEYS = TypeAdapter(list[SSHKey])
FILE_SYSTEMS = TypeAdapter(list[FileSystem])


def parse_reply(adapter: TypeAdapter[T], data: Any, what: str) -> T:
    """Validate a reply's `data`; a mismatch is a malformed reply (transient ProviderError)."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise ProviderError(
            f"Lambda API: malformed {what} reply ({where}: {first['msg']})"
        ) from None


_GPU_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*GB", re.IGNORECASE)


def gpu_memory_gb(*descriptions: str) -> float:
    """GPU memory per GPU from a description such as "1x A100 (40 GB SXM4)" (0 when absent)."""
    for text in descriptions:
        match = _GPU_MEMORY.search(text)
        if match:
            return float(match.group(1))
    return 0.0


def same_public_key(a: str, b: str) -> bool:
    """Two OpenSSH public key lines name the same key (type and base64; comments ignored)."""
    return a.split()[:2] == b.split()[:2]


def to_instance_type(info: _TypeInfo, regions: list[_Region]) -> InstanceType:
    return InstanceType(
        name=info.name,
        description=info.description,
        gpu_description=info.gpu_description,
        gpu_count=info.specs.gpus,
        gpu_memory_gb=gpu_memory_gb(info.gpu_description, info.description, info.name),
        price_per_hour=info.price_cents_per_hour / 100,
        spot_price_per_hour=None,
        regions=sorted(r.name for r in regions),
    )


def to_instance(wire: _InstanceWire) -> Instance:
    return Instance(
        id=wire.id,
        name=wire.name or "",
        status=wire.status,
        instance_type=wire.instance_type.name,
        region=wire.region.name,
        capacity="on_demand",
        price_per_hour=wire.instance_type.price_cents_per_hour / 100,
        host=wire.ip,
        ssh_user=SSH_USER,
        workdir=WORKDIR,
    )
