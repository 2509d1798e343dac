"""One job's specification, typed: its training run (`JobConfig`), the provider it runs on
(`ProviderSpec`) and the grid overrides that made it (`JobSpec`).

It lives in the queue core, below `jobs`, because a stored job record holds it
(`queue_app.records.JobRecord.job_spec`); reading sweep files and expanding their grids into
JobSpecs stays in `jobs.spec`. A JobSpec is stored as JSON holding only the fields a user set
(`exclude_unset`), so validation that depends on which fields were set (the provider's
local-only fields, the run's consistency checks) gives the same answer after the round trip.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sae.config import RunConfig


class SpecModel(BaseModel):
    """Base of the spec models: unknown fields, infinities and NaN are refused; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ProviderSpec(SpecModel):
    """Where instances come from."""

    name: Literal["local", "lambda", "aws"] = Field("local", description="Provider to launch on.")
    price_per_hour: float | None = Field(
        None, ge=0, description="local: what the cost code charges per instance-hour."
    )
    boot_delay_s: float = Field(0.0, ge=0, le=3600, description="local: seconds spent booting.")
    preempt_rate: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="local: expected spot preemptions per instance-hour (chaos runs; 0: none).",
    )
    notice_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="local: seconds of interruption notice before a random preemption (0: none).",
    )
    regions: list[str] | None = Field(None, description="Only launch in these regions.")
    instance_types: list[str] | None = Field(None, description="Only launch these types.")
    file_system: str | None = Field(None, description="Persistent filesystem for checkpoints.")
    ssh_cidrs: list[str] | None = Field(
        None, description="aws: CIDRs admitted to SSH (the control plane's address must be in one)."
    )
    ami: str | None = Field(
        None, pattern=r"^ami-[0-9a-f]{8,17}$", description="aws: image (default: the DLAMI's)."
    )
    max_spot_price: float | None = Field(
        None, gt=0, description="aws: highest spot price per hour to pay (default: on-demand's)."
    )
    preemption_rates: dict[str, float] | None = Field(
        None, description="aws: expected spot preemptions per hour by type (overrides the table)."
    )

    @field_validator("ssh_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str] | None) -> list[str] | None:
        for cidr in cidrs or []:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR such as 203.0.113.7/32 ({exc})") from None
            if "/" not in cidr:
                raise ValueError(f"{cidr!r} is not a CIDR: add the prefix length (/32: one host)")
        return cidrs

    @model_validator(mode="after")
    def _provider_only_fields(self) -> Self:
        for owner, fields in _PROVIDER_ONLY_FIELDS.items():
            if self.name == owner:
                continue
            for field in fields:  # set to a value (a stored full dump holds None for them)
                if field in self.model_fields_set and getattr(self, field) is not None:
                    raise ValueError(f"provider.{field} applies only to provider {owner!r}")
        return self


_PROVIDER_ONLY_FIELDS = {
    "local": ("price_per_hour", "boot_delay_s", "preempt_rate", "notice_s"),
    "aws": ("ssh_cidrs", "ami", "max_spot_price", "preemption_rates"),
}


class GPUSpec(SpecModel):
    """What the instance must offer."""

    min_vram_gb: float = Field(0.0, ge=0, description="Free GPU memory the job needs.")
    count: int = Field(1, ge=1, le=8, description="GPUs per instance.")
    require_gpu: bool = Field(
        True, description="Fail verification without a CUDA GPU (false lets a job run on CPU)."
    )


class TrackingSpec(SpecModel):
    """Experiment tracking: one Weights & Biases run per job, grouped by sweep."""

    wandb_project: str = Field(..., min_length=1, description="W&B project the runs go to.")
    wandb_entity: str | None = Field(None, description="W&B team or user (default: the key's).")
    wandb_key_env: str = Field(
        "WANDB_API_KEY",
        description="Variable on the control plane holding the W&B API key; it reaches the "
        "instance's worker like the HF token, never a log, record or task.",
    )


class JobConfig(RunConfig):
    """One job: a training run plus how the fleet runs it."""

    segment_minutes: float = Field(
        30.0, gt=0, le=24 * 60, description="Longest training segment between checkpoints."
    )
    gpu: GPUSpec = GPUSpec()
    capacity: Literal["spot", "on_demand", "auto"] = Field(
        "auto", description="spot, on-demand, or spot until max_preemptions then on-demand."
    )
    max_preemptions: int = Field(3, ge=0, description="Preemptions tolerated (see capacity).")
    max_attempts: int = Field(5, ge=1, le=50, description="Attempts before the job fails.")
    max_cost_usd: float | None = Field(None, gt=0, description="Cost cap for this job.")
    disk_gb: int = Field(
        200, ge=8, le=16384, description="Root volume of the instance, GB (providers that size it)."
    )
    max_wait_for_capacity_s: float = Field(
        3600.0, ge=0, description="How long provisioning waits for capacity before failing."
    )
    tracking: TrackingSpec | None = Field(
        None, description="Log training to W&B (a sweep's top-level `tracking` sets it)."
    )

    def run_config(self) -> RunConfig:
        """The training-run part of this job (what the GPU-side trainer reads)."""
        fields = set(RunConfig.model_fields)
        return RunConfig.model_validate(self.model_dump(include=fields, exclude_unset=True))


class JobSpec(SpecModel):
    """One grid point of a sweep: everything a job runs with."""

    index: int = Field(..., ge=0, description="Position in the sweep's grid order.")
    name: str = Field(..., description="The overrides as `path=value,...` (the sweep's name).")
    overrides: dict[str, Any] = Field(..., description="Dotted path -> value of this grid point.")
    config: JobConfig = Field(..., description="The job's full config, overrides applied.")
    provider: ProviderSpec = Field(..., description="Where its instances come from.")

    def stored(self) -> dict[str, Any]:
        """The JSON a job record keeps (index and name are record fields of their own)."""
        return {
            "overrides": self.overrides,
            "config": self.config.model_dump(mode="json", exclude_unset=True),
            "provider": self.provider.model_dump(mode="json", exclude_unset=True),
        }

    @classmethod
    def from_stored(cls, index: int, name: str, stored: dict[str, Any]) -> JobSpec:
        """Validate what `stored` wrote (pydantic's ValidationError when it does not)."""
        return cls.model_validate({"index": index, "name": name, **stored})
