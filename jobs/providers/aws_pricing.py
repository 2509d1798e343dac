"""Live AWS spot prices (`describe_spot_price_history`). On-demand prices come from the dated
catalog (`jobs.catalog.AWS_CATALOG`); preemption rates and the spot-or-on-demand choice from
`jobs.spot_choice`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jobs.providers.aws_errors import call

SPOT_PRODUCT = "Linux/UNIX"


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
