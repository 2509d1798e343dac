"""AWS prices beyond the dated on-demand catalog (`jobs.catalog.AWS_CATALOG`): the live spot
price from `describe_spot_price_history`, a dated table of spot preemption rates the sweep can
override (`provider.preemption_rates`), and the expected cost of a job on spot."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.providers.aws_errors import call

SPOT_PRODUCT = "Linux/UNIX"


class PreemptionTable(BaseModel):
    """Expected spot preemptions per instance-hour, by instance family, as of a date."""

    model_config = ConfigDict(frozen=True)

    as_of: date
    source: str
    monthly_fraction: dict[str, float] = Field(
        ..., description="Family -> fraction of spot instances interrupted in a month."
    )

    def rate_per_hour(self, instance_type: str, overrides: Mapping[str, float] | None) -> float:
        """Expected preemptions per hour of `instance_type`: the user's override, else the
        family's monthly fraction as a constant hazard (-ln(1 - p) / 730 h); unknown: 20 %."""
        if overrides and instance_type in overrides:
            return overrides[instance_type]
        fraction = self.monthly_fraction.get(instance_type.split(".", maxsplit=1)[0], 0.20)
        return -math.log(1.0 - fraction) / (365.25 * 24 / 12)


PREEMPTION_RATES = PreemptionTable(
    as_of=date(2025, 6, 5),
    source="AWS Spot Instance Advisor interruption-frequency buckets, upper bounds (recalled)",
    monthly_fraction={"g5": 0.10, "g6": 0.10, "g6e": 0.15, "p4d": 0.20, "p5": 0.20},
)


def expected_spot_price(
    spot_price: float,
    rate_per_hour: float,
    job_hours: float,
    recovery_hours: float,
    lost_hours: float,
) -> float:
    """Spot price * (1 + expected preemptions * (recovery + work lost) / job hours): what an
    hour of the job's progress costs on spot, to weigh against the on-demand price."""
    if job_hours <= 0:
        return spot_price
    preemptions = rate_per_hour * job_hours
    return spot_price * (1 + preemptions * (recovery_hours + lost_hours) / job_hours)


def latest_spot_prices(ec2: Any, types: Iterable[str]) -> dict[str, float]:
    """The current spot price of each type in the client's region: the cheapest zone's."""
    wanted = sorted(set(types))
    if not wanted:
        return {}
    prices: dict[str, float] = {}
    paginator = ec2.get_paginator("describe_spot_price_history")
    pages = paginator.paginate(
        InstanceTypes=wanted,
        ProductDescriptions=[SPOT_PRODUCT],
        StartTime=datetime.now(UTC),
    )
    for page in call("DescribeSpotPriceHistory", lambda: list(pages)):
        for row in page.get("SpotPriceHistory", []):
            price = float(row["SpotPrice"])
            name = row["InstanceType"]
            prices[name] = min(price, prices.get(name, price))
    return prices
