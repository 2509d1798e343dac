"""Packing rules (jobs.packs): which jobs of a sweep may share one activation stream, how a
group splits into packs, what the plan says with and without packing, and bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.packs import first_difference, group_jobs, memory_gb
from jobs.planner import plan_sweep
from jobs.spec import SpecError, SweepSpec, load_sweep_file
from jobs.throughput import model_shape
from tests.support.planning import EXAMPLE, example

MODEL = "meta-llama/Llama-3.1-8B"
SHAPES = {MODEL: model_shape(MODEL)}
ROOMY = dict.fromkeys(range(64), 1000.0)  # GB: memory never splits


def packs_of(grid: dict[str, list[Any]], max_pack_size: int = 8, **capacity: Any) -> list[Any]:
    jobs = example(grid=grid).expand()
    return group_jobs(jobs, max_pack_size, SHAPES, capacity.get("gb", ROOMY))


def test_jobs_differing_in_sae_layer_or_optimiser_share_one_stream() -> None:
    grid = {"sae.k": [16, 32], "layer": [12, 20], "train.lr": [1e-4, 2e-4]}
    (pack,) = packs_of(grid)
    assert pack.jobs == list(range(8)) and pack.layers == [12, 20] and pack.split is None


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("train.seed", [0, 1]),
        ("dataset", ["lmsys/lmsys-chat-1m", "./other.jsonl"]),
        ("pii_only", [True, False]),
        ("context_len", [128, 256]),
        ("train.total_tokens", [200_000_000, 100_000_000]),
        ("train.lm_dtype", ["bf16", "fp32"]),
        ("sae.normalize_activations", [True, False]),
        ("train.batch_tokens", [4096, 8192]),
        ("capacity", ["on_demand", "spot"]),
        ("gpu.min_vram_gb", [38, 70]),
    ],
)
def test_jobs_that_differ_in_the_stream_or_the_instance_never_share(
    path: str, values: list[Any]
) -> None:
    packs = packs_of({path: values, "sae.k": [16, 32]})
    assert [p.jobs for p in packs] == [[0, 1], [2, 3]]
    first, other = example(grid={path: values}).expand()
    assert first_difference(first.config, other.config) == path


def test_max_pack_size_splits_and_one_turns_packing_off() -> None:
    grid = {"sae.k": [16, 32, 64, 128]}
    packs = packs_of(grid, max_pack_size=3)
    assert [p.jobs for p in packs] == [[0, 1, 2], [3]]
    assert packs[0].split == "max_pack_size 3" and packs[1].split is None
    assert [p.jobs for p in packs_of(grid, max_pack_size=1)] == [[0], [1], [2], [3]]


def test_a_pack_splits_where_the_next_member_would_not_fit_in_memory() -> None:
    config = example().expand()[0].config
    shape = SHAPES[MODEL]
    assert shape is not None
    lm = 32 * 218_103_808 * 1.15 * 2  # bf16 weights, embeddings margin
    buffer = 65_536 * 4096 * 2  # one layer's shuffle buffer, bf16
    sae = 16 * (2 * 32768 * 4096 + 32768 + 4096) + 2 * 4 * 4096 * 32768
    assert memory_gb([config], shape) == pytest.approx((lm + buffer + sae) / 1e9 + 2.0)
    packs = packs_of({"sae.k": [16, 32, 64, 128]}, gb=dict.fromkeys(range(4), 40.0))
    assert [p.jobs for p in packs] == [[0, 1, 2], [3]]
    assert packs[0].split is not None and packs[0].split.startswith("memory: 4 members need ~40 GB")
    assert all(p.memory_gb is not None and p.memory_gb <= 36 for p in packs)


def test_the_plan_prices_packs_and_the_sweep_without_them() -> None:
    plan = plan_sweep(example(grid={"sae.k": [16, 32, 64, 128]}), None)
    assert plan.max_pack_size == 8 and [p.jobs for p in plan.packs] == [[0, 1, 2], [3]]
    alone, packed = plan.estimated_cost_usd, plan.packed_cost_usd
    assert alone is not None and packed is not None and packed < alone
    assert plan.packs[1].hours == pytest.approx(plan.jobs[3].hours)  # a pack of one = the job
    longest_member = max(j.hours or 0 for j in plan.jobs[:3])
    assert longest_member < (plan.packs[0].hours or 0) < sum(j.hours or 0 for j in plan.jobs[:3])
    assert plan.packed_hours == pytest.approx(sum(p.hours or 0 for p in plan.packs))


def test_pack_all_names_the_field_that_keeps_jobs_apart() -> None:
    spec = example(grid={"train.seed": [0, 1]}, pack_all=True)
    with pytest.raises(SpecError, match=r"pack_all: jobs 0 and 1 differ in job\.train\.seed"):
        plan_sweep(spec, None)
    too_many = example(grid={"sae.k": [16, 32, 64]}, pack_all=True, max_pack_size=2)
    with pytest.raises(SpecError, match=r"exceed max_pack_size \(2\)"):
        plan_sweep(too_many, None)
    assert len(plan_sweep(example(grid={"sae.k": [16, 32]}, pack_all=True), None).packs) == 1


def test_max_pack_size_defaults_to_eight() -> None:
    assert load_sweep_file(EXAMPLE).max_pack_size == 8
    assert SweepSpec.model_fields["max_pack_size"].default == 8


def test_the_budget_is_checked_against_the_packs_the_fleet_runs() -> None:
    grid = {"sae.k": [16, 32, 64, 128]}
    plan = plan_sweep(example(grid=grid), None)
    alone, packed = plan.estimated_cost_usd or 0, plan.packed_cost_usd or 0
    assert (plan.fleet_cost_usd, plan.fleet_hours, plan.fleet_instances) == (
        packed,
        plan.packed_hours,
        2,
    )
    between = plan_sweep(example(grid=grid, budget_usd=(alone + packed) / 2), None)
    assert not between.over_budget and between.budget_refusal() is None  # fits only packed
    tight = plan_sweep(example(grid=grid, budget_usd=packed / 2), None)
    refusal = tight.budget_refusal() or ""
    assert f"estimated cost ${packed:.2f} (4 jobs in 2 pack(s)," in refusal
    assert json.loads(tight.model_dump_json())["fleet_cost_usd"] == pytest.approx(packed)

    one_each = plan_sweep(example(grid=grid, max_pack_size=1, budget_usd=packed), None)
    assert one_each.fleet_cost_usd == one_each.estimated_cost_usd and one_each.over_budget
    assert one_each.fleet_instances == 4
