"""Placement: the failover order of launch candidates, spec filters, the filesystem's region,
spot until preemptions run out, what fits, and the GPU memory floor after out of memory."""

from __future__ import annotations

from jobs.placement import capacity_for, fits, plan_launch
from queue_app.jobspec import ProviderSpec
from tests.support.planning import LIVE_TYPES, StaticProvider, config, itype


def test_failover_order_is_cheapest_first_across_types_and_regions() -> None:
    found = plan_launch(config(), ProviderSpec(name="lambda"), StaticProvider(LIVE_TYPES), 0)
    assert [(c.instance_type, c.region, c.price_per_hour) for c in found] == [
        ("gpu_1x_a100_sxm4", "us-east-1", 1.29),
        ("gpu_1x_a100_sxm4", "us-west-1", 1.29),
        ("gpu_1x_h100_sxm5", "us-south-1", 3.29),
        ("gpu_8x_a100_80gb_sxm4", "us-east-1", 14.32),
    ]
    assert {c.capacity for c in found} == {"on_demand"}


def test_spec_filters_and_the_file_system_region_narrow_the_candidates() -> None:
    provider = StaticProvider(LIVE_TYPES, fs_region="us-west-1")
    spec = ProviderSpec(name="lambda", regions=["us-east-1", "us-south-1"])
    assert [c.region for c in plan_launch(config(), spec, provider, 0)] == [
        "us-east-1",
        "us-south-1",
        "us-east-1",
    ]
    spec = ProviderSpec(name="lambda", instance_types=["gpu_1x_h100_sxm5"])
    assert [c.instance_type for c in plan_launch(config(), spec, provider, 0)] == [
        "gpu_1x_h100_sxm5"
    ]
    spec = ProviderSpec(name="lambda", file_system="ckpts")
    assert {c.region for c in plan_launch(config(), spec, provider, 0)} == {"us-west-1"}


def test_spot_is_used_where_offered_until_preemptions_run_out() -> None:
    types = [
        itype("a", 2.0, 40, ["r1"], spot_price_per_hour=0.8),
        itype("b", 1.5, 40, ["r1"]),
    ]
    auto = config(capacity="auto", max_preemptions=2)
    first = plan_launch(auto, ProviderSpec(), StaticProvider(types), preemptions=0)
    assert [(c.instance_type, c.capacity, c.price_per_hour) for c in first] == [("a", "spot", 0.8)]
    later = plan_launch(auto, ProviderSpec(), StaticProvider(types), preemptions=2)
    assert [c.instance_type for c in later] == ["b", "a"] and later[0].capacity == "on_demand"
    assert capacity_for(config(capacity="spot"), 9, spot_offered=True) == "spot"
    assert capacity_for(config(capacity="spot"), 0, spot_offered=False) == "on_demand"


def test_fits_checks_gpu_count_and_memory_unless_no_gpu_is_required() -> None:
    job = config()
    assert fits(job, itype("x", 1, 40, []))
    assert not fits(job, itype("x", 1, 24, []))
    assert not fits(config(gpu=job.gpu.model_copy(update={"count": 2})), itype("x", 1, 40, []))
    cpu_job = config(gpu=job.gpu.model_copy(update={"require_gpu": False}))
    assert fits(cpu_job, itype("x", 1, 0, [], gpu_count=0))


def test_after_out_of_memory_only_types_with_more_gpu_memory_are_candidates() -> None:
    found = plan_launch(
        config(), ProviderSpec(name="lambda"), StaticProvider(LIVE_TYPES), 0, gpu_memory_above_gb=40
    )
    assert [c.instance_type for c in found] == ["gpu_1x_h100_sxm5", "gpu_8x_a100_80gb_sxm4"]
