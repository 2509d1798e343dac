"""The Provider protocol and the typed models every provider returns."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from jobs.providers.notice import NoticeChannel

INSTANCE_NAME_PREFIX = "sf-"
Capacity = Literal["spot", "on_demand"]


def instance_name(job_id: str, attempt: int) -> str:
    """The deterministic name of a job attempt's instance; it makes launch idempotent."""
    return f"{INSTANCE_NAME_PREFIX}{job_id}-{attempt}"


class InstanceStatus(StrEnum):
    """The provider's view of an instance (Lambda's vocabulary)."""

    BOOTING = "booting"
    ACTIVE = "active"
    UNHEALTHY = "unhealthy"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    PREEMPTED = "preempted"

    @property
    def gone(self) -> bool:
        return self in (InstanceStatus.TERMINATED, InstanceStatus.PREEMPTED)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class InstanceType(_Model):
    name: str
    description: str = ""
    gpu_description: str = ""
    gpu_count: int = 0
    gpu_memory_gb: float = 0.0
    price_per_hour: float
    spot_price_per_hour: float | None = None
    regions: list[str] = Field(default_factory=list, description="Regions with capacity now.")


class Instance(_Model):
    id: str
    name: str
    status: InstanceStatus
    instance_type: str
    region: str
    capacity: Capacity = "on_demand"
    price_per_hour: float
    host: str | None = None
    ssh_port: int = 22
    ssh_user: str = "ubuntu"
    workdir: str = Field(..., description="Absolute directory saefleet owns on the instance.")


class LaunchRequest(_Model):
    name: str
    instance_type: str
    region: str
    capacity: Capacity = "on_demand"
    ssh_public_key: str = Field(..., description="OpenSSH public key line to authorize.")
    ssh_key_name: str = "saefleet"
    file_system: str | None = None
    disk_gb: int = Field(200, description="Root volume size, where the provider sizes it.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="job, attempt, sweep: tags where the provider has them."
    )


@runtime_checkable
class Provider(Protocol):
    """What saefleet needs from a GPU cloud."""

    name: str

    def instance_types(self) -> list[InstanceType]:
        """Types on offer, with price and the regions that have capacity now."""
        ...

    def launch(self, request: LaunchRequest) -> Instance:
        """Launch one instance named `request.name`; idempotent on that name."""
        ...

    def get(self, instance_id: str) -> Instance:
        """One instance; NotFound when the provider does not know it."""
        ...

    def list(self, include_foreign: bool = False) -> list[Instance]:
        """Instances whose name carries our prefix (all of them with include_foreign)."""
        ...

    def terminate(self, instance_id: str) -> None:
        """Terminate; an instance that is already gone counts as success."""
        ...

    def notice_channel(self, workdir: str) -> NoticeChannel | None:
        """Where an instance whose workdir is `workdir` reads its interruption notices (the
        GPU-side worker polls it, see jobs.providers.notice); None: this provider gives none."""
        ...
