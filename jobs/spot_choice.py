"""Spot or on-demand for `capacity: auto`, by expected cost.

An hour of a job's progress on spot costs

    spot price * (1 + expected preemptions * (recovery + work lost) / job hours)

and expected preemptions = rate per hour * job hours, so job hours cancel: the spot price
times (1 + rate * (recovery + work lost)). Recovery is the setup of a new instance (boot,
bootstrap, model download); the work lost is half a segment (checkpoints are written at segment
ends). `auto` takes spot where that is below the on-demand price.

Rates come from a dated per-type table for providers that have one (AWS), overridden by the
sweep's `provider.preemption_rates`. The local provider's `preempt_rate` simulates preemptions
(chaos runs) and is not weighed: there `auto` stays spot, as elsewhere without a table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from jobs.providers.base import InstanceType
from queue_app.jobspec import JobConfig, ProviderSpec

CLOUD_SETUP_HOURS = 0.25
"""Billed time before training on a cloud instance: booting (the seed guide: 5-10 min) plus
bootstrap and the model download (an assumption: ~5 min for a 16 GB model)."""
HOURS_PER_MONTH = 365.25 * 24 / 12


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PreemptionTable(_Frozen):
    """Expected spot preemptions per instance-hour, by instance family, as of a date."""

    as_of: date
    source: str
    monthly_fraction: dict[str, float] = Field(
        ..., description="Family -> fraction of spot instances interrupted in a month."
    )
    unknown_fraction: float = Field(0.20, description="For a family the table lacks.")

    def rate_per_hour(self, instance_type: str, overrides: Mapping[str, float] | None) -> float:
        """The user's override, else the family's monthly fraction p as a constant hazard:
        -ln(1 - p) / hours in a month."""
        if overrides and instance_type in overrides:
            return overrides[instance_type]
        family = instance_type.split(".", maxsplit=1)[0]
        fraction = self.monthly_fraction.get(family, self.unknown_fraction)
        return -math.log(1.0 - fraction) / HOURS_PER_MONTH


AWS_PREEMPTION_RATES = PreemptionTable(
    as_of=date(2025, 6, 5),
    source="AWS Spot Instance Advisor interruption-frequency buckets, upper bounds (recalled)",
    monthly_fraction={"g5": 0.10, "g6": 0.10, "g6e": 0.15, "p4d": 0.20, "p5": 0.20},
)
RATE_TABLES: dict[str, PreemptionTable] = {"aws": AWS_PREEMPTION_RATES}


class SpotEstimate(_Frozen):
    """What spot is expected to cost for one type, against its on-demand price."""

    spot_price_per_hour: float
    preemptions_per_hour: float
    expected_price_per_hour: float
    on_demand_price_per_hour: float

    @property
    def pays(self) -> bool:
        return self.expected_price_per_hour < self.on_demand_price_per_hour


def expected_spot_price(
    spot: float, rate_per_hour: float, recovery_h: float, lost_h: float
) -> float:
    """Spot price per hour of progress (see the module docstring)."""
    return spot * (1 + rate_per_hour * (recovery_h + lost_h))


def spot_estimate(
    config: JobConfig, provider_spec: ProviderSpec, itype: InstanceType
) -> SpotEstimate | None:
    """The expected spot cost of `itype` for this job; None without a spot price or a table."""
    table = RATE_TABLES.get(provider_spec.name)
    if table is None or itype.spot_price_per_hour is None:
        return None
    rate = table.rate_per_hour(itype.name, provider_spec.preemption_rates)
    lost_h = config.segment_minutes / 2 / 60
    return SpotEstimate(
        spot_price_per_hour=itype.spot_price_per_hour,
        preemptions_per_hour=rate,
        expected_price_per_hour=expected_spot_price(
            itype.spot_price_per_hour, rate, CLOUD_SETUP_HOURS, lost_h
        ),
        on_demand_price_per_hour=itype.price_per_hour,
    )
