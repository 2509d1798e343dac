"""Where a job's next attempt launches: every (type, region, capacity) it may run on, cheapest
first across types and regions, which is the capacity failover order of the provision stage.

Spot: a job asking for spot (or `auto`) gets on-demand where the provider offers no spot price
(Lambda offers none), and `auto` falls back to on-demand after `max_preemptions`; before that,
`auto` takes on-demand for a type whose expected spot cost is higher (jobs.spot_choice).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from jobs.providers.base import Capacity, InstanceType, Provider
from jobs.providers.local import INSTANCE_TYPE as LOCAL_TYPE
from jobs.spot_choice import spot_estimate
from queue_app.jobspec import JobConfig, ProviderSpec


class Candidate(BaseModel):
    """One place a job could launch, with the price it would pay there."""

    model_config = ConfigDict(frozen=True)

    instance_type: str
    region: str
    capacity: Capacity
    price_per_hour: float
    gpu_memory_gb: float


@runtime_checkable
class FileSystemRegions(Protocol):
    """A provider whose persistent filesystems live in one region each."""

    def file_system_region(self, name: str) -> str: ...


def capacity_for(config: JobConfig, preemptions: int, spot_offered: bool) -> Capacity:
    """The capacity an attempt asks for, given the job's policy and preemptions so far."""
    if config.capacity == "on_demand" or not spot_offered:
        return "on_demand"
    if config.capacity == "auto" and preemptions >= config.max_preemptions:
        return "on_demand"
    return "spot"


def fits(config: JobConfig, itype: InstanceType) -> bool:
    """The type has the GPUs and GPU memory the job needs (anything fits a CPU-only job)."""
    if not config.gpu.require_gpu:
        return True
    return itype.gpu_count >= config.gpu.count and itype.gpu_memory_gb >= config.gpu.min_vram_gb


def candidates(
    config: JobConfig,
    provider_spec: ProviderSpec,
    types: list[InstanceType],
    capacity: Capacity,
) -> list[Candidate]:
    """Every (type, region) that fits the job and has capacity now, cheapest first; with
    `capacity` spot, an `auto` job's types where spot does not pay come on-demand."""
    out = []
    for itype in allowed_types(config, provider_spec, types):
        price, chosen = itype.price_per_hour, capacity
        if capacity == "spot":
            if itype.spot_price_per_hour is None:
                continue
            weighed = spot_estimate(config, provider_spec, itype)
            if config.capacity == "auto" and weighed is not None and not weighed.pays:
                chosen = "on_demand"
            else:
                price = itype.spot_price_per_hour
        for region in itype.regions:
            if provider_spec.regions and region not in provider_spec.regions:
                continue
            out.append(
                Candidate(
                    instance_type=itype.name,
                    region=region,
                    capacity=chosen,
                    price_per_hour=price,
                    gpu_memory_gb=itype.gpu_memory_gb,
                )
            )
    return sorted(out, key=lambda c: (c.price_per_hour, c.instance_type, c.region))


def plan_launch(
    config: JobConfig,
    provider_spec: ProviderSpec,
    provider: Provider,
    preemptions: int,
    gpu_memory_above_gb: float | None = None,
) -> list[Candidate]:
    """Candidates for the next attempt of a job on `provider`, in failover order. With a
    persistent filesystem, only its region qualifies; with `gpu_memory_above_gb` (the job ran
    out of memory on a type that size, jobs.oom), only types with more GPU memory."""
    types = provider.instance_types()
    if gpu_memory_above_gb is not None:
        types = [t for t in types if t.gpu_memory_gb > gpu_memory_above_gb]
    spot_offered = any(t.spot_price_per_hour is not None for t in types)
    capacity = capacity_for(config, preemptions, spot_offered)
    found = candidates(config, provider_spec, types, capacity)
    if provider_spec.file_system and isinstance(provider, FileSystemRegions):
        region = provider.file_system_region(provider_spec.file_system)
        found = [c for c in found if c.region == region]
    return found


def allowed_types(
    config: JobConfig, provider_spec: ProviderSpec, types: list[InstanceType]
) -> list[InstanceType]:
    """The types the job may run on (see `usable`), in the given order."""
    return [t for t in types if usable(config, provider_spec, t)]


def usable(config: JobConfig, provider_spec: ProviderSpec, itype: InstanceType) -> bool:
    """The spec allows the type and the job fits it. The local provider's one type runs
    whatever it is given: `verify_gpu` decides there whether a GPU-bound job can run."""
    if provider_spec.instance_types and itype.name not in provider_spec.instance_types:
        return False
    return itype.name == LOCAL_TYPE or fits(config, itype)
