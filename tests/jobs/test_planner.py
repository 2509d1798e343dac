"""The planner: sweep plans priced live / from the catalog / for local, the budget check, and
the throughput model its hours come from (launch candidates: test_placement.py)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from jobs.catalog import LAMBDA_CATALOG
from jobs.planner import plan_sweep
from jobs.providers.errors import ProviderError
from jobs.spec import SweepSpec
from jobs.throughput import (
    CPU_EFFECTIVE_FLOPS,
    flops_per_token,
    gpu_device,
    model_shape,
    shape_from_config,
)
from tests.support.planning import LIVE_TYPES, StaticProvider, config, example, itype

TODAY = date(2026, 11, 23)

# The example job by hand (Llama-3.1-8B: d 4096, FFN 14336, 32 query / 8 KV heads of 128):
PARAMS_PER_LAYER = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336  # 218,103,808
LM_FLOPS = 13 * (2 * PARAMS_PER_LAYER + 2 * 128 * 4096)  # layers 0-12, context 128
SAE_FLOPS = 2 * 4096 * 32768 + 8 * 32 * 4096 + 6 * 512 * 4096  # topk, k 32, aux_k 512
FLOPS = 5_966_397_440
A100_TOKENS_PER_S = 312e12 * 0.30 / FLOPS  # 15,687.9
HOURS = 200_000_000 / A100_TOKENS_PER_S / 3600 + 0.25  # 3.7913
COST = HOURS * 1.29  # 4.8908


# ---- the example with the built-in catalog -----------------------------------------------------


def test_the_hand_calculation_adds_up() -> None:
    assert PARAMS_PER_LAYER == 218_103_808
    assert LM_FLOPS + SAE_FLOPS == FLOPS
    assert flops_per_token(config(), model_shape("meta-llama/Llama-3.1-8B")) == FLOPS  # type: ignore[arg-type]


def test_example_plan_from_the_catalog_matches_the_hand_calculation() -> None:
    plan = plan_sweep(example(), None, today=TODAY)
    assert plan.price_source == "catalog"
    assert plan.prices_as_of == date(2025, 10, 30)
    assert any("as of 2025-10-30" in w and "may be stale" in w for w in plan.warnings)
    assert any("389 days" in w for w in plan.warnings)
    assert any("no spot" in w for w in plan.warnings)
    assert [c.instance_type for c in plan.candidates] == [
        "gpu_1x_a100",
        "gpu_1x_a100_sxm",
        "gpu_8x_a100_80gb_sxm4",
    ]
    first = plan.candidates[0]
    assert first.tokens_per_s == pytest.approx(A100_TOKENS_PER_S)
    assert first.hours_per_job == pytest.approx(HOURS)
    assert first.cost_per_job_usd == pytest.approx(COST)
    assert plan.candidates[1].cost_per_job_usd == pytest.approx(HOURS * 1.79)
    assert plan.pick is not None
    assert (plan.pick.instance_type, plan.pick.region) == ("gpu_1x_a100", "us-east-1")
    assert plan.capacity == "on_demand"
    assert plan.estimated_cost_usd == pytest.approx(COST)
    assert round(plan.estimated_cost_usd or 0, 2) == 4.89
    assert not plan.over_budget and plan.budget_refusal() is None
    assert json.loads(plan.model_dump_json())["estimated_cost_usd"] == pytest.approx(COST)


def test_a_grid_sums_its_jobs_and_each_job_has_its_own_hours() -> None:
    spec = example(grid={"sae.n_latents": [16384, 32768], "train.total_tokens": [100_000_000]})
    plan = plan_sweep(spec, None, today=TODAY)
    small, large = plan.jobs
    assert large.hours == pytest.approx((HOURS - 0.25) / 2 + 0.25)
    small_flops = FLOPS - 2 * 4096 * 16384
    assert small.tokens_per_s == pytest.approx(312e12 * 0.30 / small_flops)
    assert plan.estimated_cost_usd == pytest.approx((small.hours + large.hours) * 1.29)  # type: ignore[operator]
    assert plan.candidates[0].sweep_cost_usd == pytest.approx(plan.estimated_cost_usd)


def test_over_budget_refusal_gives_the_numbers_and_the_way_out() -> None:
    plan = plan_sweep(example(budget_usd=3.0), None, today=TODAY)
    assert plan.over_budget
    refusal = plan.budget_refusal()
    assert refusal is not None
    assert "$4.89" in refusal and "$3.00" in refusal and "--force" in refusal
    assert plan.estimated_cost_usd == pytest.approx(COST)


def test_a_model_without_a_known_shape_has_no_estimate() -> None:
    spec = example()
    raw = spec.model_dump(exclude_unset=True)
    raw["job"]["model"] = "someone/unknown-model-7b"
    plan = plan_sweep(SweepSpec.model_validate(raw), None, today=TODAY)
    assert plan.estimated_cost_usd is None
    assert any("unknown-model-7b" in w for w in plan.warnings)
    assert "cannot estimate" in (plan.budget_refusal() or "")


# ---- live prices -------------------------------------------------------------------------------


def test_live_prices_pick_the_cheapest_type_with_capacity() -> None:
    plan = plan_sweep(example(), StaticProvider(LIVE_TYPES), today=TODAY)
    assert plan.price_source == "live"
    assert not any("may be stale" in w for w in plan.warnings)
    rows = {c.instance_type: c for c in plan.candidates}
    assert "gpu_1x_a10" not in rows  # 24 GB < 38 GB
    assert rows["gpu_1x_a100"].regions == []  # fits, no capacity now
    assert plan.pick is not None
    assert (plan.pick.instance_type, plan.pick.region) == ("gpu_1x_a100_sxm4", "us-east-1")
    assert rows["gpu_1x_h100_sxm5"].tokens_per_s == pytest.approx(989e12 * 0.30 / FLOPS)
    assert plan.jobs[0].cost_usd == pytest.approx(COST)


def test_no_capacity_anywhere_still_prices_the_cheapest_fit_and_says_so() -> None:
    types = [itype("gpu_1x_a100", 1.29, 40, []), itype("gpu_1x_h100", 2.49, 80, [], gpu="H100")]
    plan = plan_sweep(example(), StaticProvider(types), today=TODAY)
    assert plan.pick is None
    assert plan.jobs[0].instance_type == "gpu_1x_a100" and plan.jobs[0].region is None
    assert plan.estimated_cost_usd == pytest.approx(COST)


def test_a_failing_provider_falls_back_to_the_catalog_with_a_warning() -> None:
    plan = plan_sweep(example(), StaticProvider(ProviderError("boom")), today=TODAY)
    assert plan.price_source == "catalog"
    assert any("live prices unavailable (boom)" in w for w in plan.warnings)
    assert plan.estimated_cost_usd == pytest.approx(COST)


def test_nothing_fits_is_explained() -> None:
    raw = example().model_dump(exclude_unset=True)
    raw["job"]["gpu"] = {"min_vram_gb": 200}
    plan = plan_sweep(SweepSpec.model_validate(raw), None, today=TODAY)
    assert plan.candidates == [] and plan.pick is None and plan.estimated_cost_usd is None
    assert any("no lambda instance type fits" in w and "200 GB" in w for w in plan.warnings)


# ---- local -------------------------------------------------------------------------------------


def tiny_model(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-llama"
    model.mkdir()
    config_json = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    }
    (model / "config.json").write_text(json.dumps(config_json))
    return model


def test_local_plans_use_the_spec_price_and_the_measured_cpu_figure(tmp_path: Path) -> None:
    spec = SweepSpec.model_validate(
        {
            "name": "demo",
            "provider": {"name": "local", "price_per_hour": 0.5, "boot_delay_s": 36},
            "budget_usd": 1,
            "job": {
                "model": str(tiny_model(tmp_path)),
                "layer": 1,
                "dataset": str(tmp_path / "chats.jsonl"),
                "sae": {"n_latents": 512, "k": 16, "aux_k": None},
                "train": {"total_tokens": 7_300_000, "dtype": "fp32"},
                "gpu": {"require_gpu": False},
                "capacity": "on_demand",
            },
        }
    )
    plan = plan_sweep(spec, None)
    # tiny Llama by hand: 2 layers x (2 x 65,536 params + 2 x 128 x 64) + 2 x 64 x 512 + 8 x 16 x 64
    flops = 2 * (2 * 65_536 + 2 * 128 * 64) + 2 * 64 * 512 + 8 * 16 * 64
    hours = 7_300_000 / (CPU_EFFECTIVE_FLOPS / flops) / 3600 + 36 / 3600
    assert plan.price_source == "spec" and plan.prices_as_of is None
    assert plan.pick is not None and plan.pick.instance_type == "local-cpu"
    assert plan.jobs[0].hours == pytest.approx(hours)
    assert plan.estimated_cost_usd == pytest.approx(hours * 0.5)
    assert "measured on the dev machine" in plan.jobs[0].basis
    assert not plan.warnings


def test_local_jobs_that_require_a_gpu_are_warned_about(tmp_path: Path) -> None:
    spec = SweepSpec.model_validate(
        {
            "name": "demo",
            "job": {
                "model": str(tiny_model(tmp_path)),
                "layer": 1,
                "dataset": "x.jsonl",
                "sae": {"n_latents": 512},
                "train": {"total_tokens": 100_000},
            },
        }
    )
    plan = plan_sweep(spec, None)
    assert plan.estimated_cost_usd == 0
    assert plan.capacity == "spot"  # the local provider simulates spot
    assert any("require_gpu" in w for w in plan.warnings)


# ---- throughput and catalog --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "device"),
    [
        ("1x A100 (40 GB SXM4)", "A100"),
        ("1x A10 (24 GB PCIe)", "A10"),
        ("1x H100 (80 GB PCIe)", "H100 PCIe"),
        ("1x H100 (80 GB SXM5)", "H100 SXM"),
        ("1x GH200 (96 GB)", "GH200"),
        ("1x RTX A6000 (48 GB)", "RTX A6000"),
        ("1x Quantum Widget (12 GB)", None),
    ],
)
def test_gpus_are_recognised_from_descriptions(description: str, device: str | None) -> None:
    found = gpu_device(description)
    assert (found.name if found else None) == device


def test_a_gpu_without_bf16_gives_no_estimate_for_a_bf16_job() -> None:
    types = [itype("gpu_8x_v100", 4.4, 40, ["r1"], gpu="Tesla V100")]
    plan = plan_sweep(example(), StaticProvider(types), today=TODAY)
    assert plan.jobs[0].tokens_per_s is None and plan.estimated_cost_usd is None


def test_a_local_config_json_gives_the_shape(tmp_path: Path) -> None:
    shape = model_shape(str(tiny_model(tmp_path)))
    assert shape is not None
    assert (shape.d_model, shape.n_layers, shape.d_ffn, shape.head_dim) == (64, 2, 256, 16)
    assert shape.gated_mlp and shape.params_per_layer() == 65_536
    assert shape_from_config(tmp_path / "missing.json") is None
    assert model_shape(str(tmp_path / "missing-dir")) is None


def test_catalog_prices_are_dated_and_warn_when_stale() -> None:
    assert LAMBDA_CATALOG.as_of == date(2025, 10, 30)
    fresh = LAMBDA_CATALOG.stale_warning(date(2025, 11, 5))
    assert "6 days ago" in fresh and "may be stale" in fresh and "older than" not in fresh
    assert "older than 30 days" in LAMBDA_CATALOG.stale_warning(TODAY)
    prices = {t.name: t.price_per_hour for t in LAMBDA_CATALOG.instance_types()}
    assert prices["gpu_1x_a100"] == 1.29 and prices["gpu_1x_a100_sxm"] == 1.79
    assert all(t.spot_price_per_hour is None for t in LAMBDA_CATALOG.instance_types())
