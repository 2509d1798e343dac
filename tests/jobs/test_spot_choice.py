"""`capacity: auto` weighs spot by expected cost (jobs.spot_choice), placement follows it, and
`saefleet plan` shows spot beside on-demand with the dates of its prices and rates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from jobs.catalog import AWS_CATALOG
from jobs.placement import candidates
from jobs.providers.base import InstanceType
from jobs.spot_choice import (
    AWS_PREEMPTION_RATES,
    CLOUD_SETUP_HOURS,
    HOURS_PER_MONTH,
    expected_spot_price,
    spot_estimate,
)
from jobs.tiny_sweep import tiny_job, tiny_sweep
from ops.cli_plan import plan_command
from queue_app.jobspec import JobConfig, ProviderSpec
from tests.support.moto_aws import MotoAWS

G5 = InstanceType(
    name="g5.xlarge",
    description="1x A10G (24 GB)",
    gpu_count=1,
    gpu_memory_gb=24,
    price_per_hour=1.0,
    spot_price_per_hour=0.9,
    regions=["us-east-1"],
)


def config(capacity: str = "auto", segment_minutes: float = 30) -> JobConfig:
    job = tiny_job("m", "d", capacity=capacity, segment_minutes=segment_minutes)
    return JobConfig.model_validate(job)


def aws(rates: dict[str, float] | None = None) -> ProviderSpec:
    fields: dict[str, object] = {"name": "aws"}
    if rates is not None:
        fields["preemption_rates"] = rates
    return ProviderSpec.model_validate(fields)


def test_job_hours_cancel_in_the_expected_spot_price() -> None:
    # spot * (1 + rate * hours * (recovery + lost) / hours)
    assert expected_spot_price(2.0, 0.1, 0.25, 0.25) == pytest.approx(2.0 * 1.05)


def test_rates_come_from_the_dated_table_unless_the_sweep_overrides_them() -> None:
    assert AWS_PREEMPTION_RATES.rate_per_hour("g5.xlarge", {"g5.xlarge": 0.5}) == 0.5
    g5 = -math.log(1 - AWS_PREEMPTION_RATES.monthly_fraction["g5"]) / HOURS_PER_MONTH
    assert AWS_PREEMPTION_RATES.rate_per_hour("g5.48xlarge", None) == pytest.approx(g5)
    assert AWS_PREEMPTION_RATES.rate_per_hour("x9.huge", None) > g5  # unknown: 20 %/month


def test_auto_takes_spot_while_its_expected_cost_is_below_on_demand() -> None:
    cheap = candidates(config(), aws(), [G5], "spot")
    assert [(c.capacity, c.price_per_hour) for c in cheap] == [("spot", 0.9)]
    # 0.9 * (1 + 1.0 * (0.25 + 0.25)) = 1.35 > 1.0 on demand
    stormy = candidates(config(), aws({"g5.xlarge": 1.0}), [G5], "spot")
    assert [(c.capacity, c.price_per_hour) for c in stormy] == [("on_demand", 1.0)]
    asked = candidates(config("spot"), aws({"g5.xlarge": 1.0}), [G5], "spot")
    assert [c.capacity for c in asked] == ["spot"]  # `spot` is obeyed, not weighed


def test_the_work_lost_is_half_a_segment_plus_the_setup() -> None:
    estimate = spot_estimate(config(segment_minutes=60), aws({"g5.xlarge": 0.2}), G5)
    assert estimate is not None
    assert estimate.expected_price_per_hour == pytest.approx(
        0.9 * (1 + 0.2 * (CLOUD_SETUP_HOURS + 0.5))
    )
    assert spot_estimate(config(), ProviderSpec(name="local"), G5) is None  # no table there


def plan_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], instance_type: str) -> str:
    """What `saefleet plan` prints for the tiny sweep on AWS us-east-1 and one type."""
    provider = {"name": "aws", "regions": ["us-east-1"], "instance_types": [instance_type]}
    sweep = tiny_sweep(tmp_path / "model", tmp_path / "corpus.jsonl", provider=provider)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert plan_command(path, json_out=False) == 0
    return " ".join(capsys.readouterr().out.split())


def test_plan_shows_spot_beside_on_demand_with_the_dates(
    moto_aws: MotoAWS, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = plan_output(tmp_path, capsys, "g6e.xlarge")
    assert f"Prices as of {AWS_CATALOG.as_of}" in out
    assert f"spot preemption rates as of {AWS_PREEMPTION_RATES.as_of}" in out
    assert "spot exp. $/h" in out
    assert "g6e.xlarge" in out and "1.86" in out


def test_plan_without_aws_credentials_prices_from_the_dated_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    out = plan_output(tmp_path, capsys, "g5.xlarge")
    assert "no AWS credentials found" in out
    assert f"aws prices are from the built-in catalog, as of {AWS_CATALOG.as_of}" in out
    assert "spot prices are live only: estimated on-demand" in out
