"""What `saefleet plan` shows and `sweep submit` checks against the budget (built by
jobs.planner): the instance types that fit, each job on its pick, the packs, and the totals
with and without packing."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from jobs.placement import Candidate
from jobs.providers.base import Capacity

PriceSource = Literal["live", "catalog", "spec"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


# ---- sweep plans -------------------------------------------------------------------------------


class TypeEstimate(_Frozen):
    """One instance type that fits every job of the sweep, priced for the sweep."""

    instance_type: str
    description: str
    gpu_memory_gb: float
    price_per_hour: float
    regions: list[str]
    tokens_per_s: float | None
    hours_per_job: float | None
    cost_per_job_usd: float | None
    sweep_cost_usd: float | None
    spot_price_per_hour: float | None = None
    expected_spot_price_per_hour: float | None = None
    """Spot per hour of progress, preemptions weighed (jobs.spot_choice); None: not weighed."""


class JobEstimate(_Frozen):
    """One job on the type `submit` would pick for it."""

    index: int
    name: str
    total_tokens: int
    instance_type: str | None
    region: str | None
    price_per_hour: float | None
    tokens_per_s: float | None
    hours: float | None
    cost_usd: float | None
    basis: str


class PackEstimate(_Frozen):
    """Jobs that share one activation stream on one instance (the pick of its first job): one
    LM forward and every member's SAE step per token, one setup."""

    jobs: list[int]
    layers: list[int]
    memory_gb: float | None
    instance_type: str | None
    hours: float | None
    cost_usd: float | None
    split: str | None
    """Why the next job of this pack's group went into another pack (max_pack_size, memory)."""


class SweepPlan(_Frozen):
    """What `saefleet plan` shows and `sweep submit` checks against the budget. `estimated_*`
    price the jobs one per instance, `packed_*` the sweep's packs each on one instance; the
    `fleet_*` totals are what the fleet runs (its packs, unless `max_pack_size` is 1), and what
    the budget is checked against.
    """

    sweep: str
    provider: str
    capacity: Capacity
    price_source: PriceSource
    prices_as_of: date | None
    setup_hours_per_job: float
    warnings: list[str]
    candidates: list[TypeEstimate]
    pick: Candidate | None
    jobs: list[JobEstimate]
    estimated_hours: float | None
    estimated_cost_usd: float | None
    budget_usd: float | None
    max_pack_size: int
    packs: list[PackEstimate]
    packed_hours: float | None
    packed_cost_usd: float | None
    preemption_rates_as_of: date | None = None
    """The date of the preemption-rate table `auto` weighed spot with (None: not weighed)."""

    @property
    def packing(self) -> bool:
        """The fleet runs the sweep's packs (`max_pack_size` above 1)."""
        return self.max_pack_size > 1 and bool(self.packs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fleet_instances(self) -> int:
        """Instances the sweep runs on, at least (one per pack, or per job)."""
        return len(self.packs) if self.packing else len(self.jobs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fleet_hours(self) -> float | None:
        """Instance-hours as the fleet runs the sweep."""
        return self.packed_hours if self.packing else self.estimated_hours

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fleet_cost_usd(self) -> float | None:
        """Dollars as the fleet runs the sweep: what the budget is checked against."""
        return self.packed_cost_usd if self.packing else self.estimated_cost_usd

    @property
    def over_budget(self) -> bool:
        return (
            self.budget_usd is not None
            and self.fleet_cost_usd is not None
            and self.fleet_cost_usd > self.budget_usd
        )

    def budget_refusal(self) -> str | None:
        """Why `submit` refuses this sweep without --force (one line), or None."""
        if self.budget_usd is None:
            return None
        if self.fleet_cost_usd is None:
            return (
                f"cannot estimate the cost of sweep {self.sweep} against budget_usd "
                f"${self.budget_usd:.2f} (see `saefleet plan`); pass --force to submit anyway"
            )
        if not self.over_budget:
            return None
        packed = f" in {len(self.packs)} pack(s)" if self.packing else ""
        return (
            f"estimated cost ${self.fleet_cost_usd:.2f} ({len(self.jobs)} jobs{packed}, "
            f"{self.fleet_hours or 0:.1f} instance-hours) exceeds budget_usd "
            f"${self.budget_usd:.2f}: raise budget_usd, shrink the grid, or pass --force"
        )
