"""What a sweep will cost, before it runs.

`plan_sweep` (`saefleet plan`, `sweep submit`): for a sweep file, the instance types that fit,
their price and regions, the estimated hours and dollars per job and for the whole sweep, the
pick `submit` would make (the first launch candidate, jobs.placement), and where the prices came
from (live, the dated built-in catalog with a stale warning, or the local provider's
`price_per_hour`). Where the provider offers no spot price, the plan says jobs run on-demand.
"""

from __future__ import annotations

from datetime import date

from jobs.catalog import CATALOGS
from jobs.packs import PlannedPack, check_one_pack, group_jobs
from jobs.placement import allowed_types, candidates, capacity_for, usable
from jobs.plan_models import (
    JobEstimate,
    PackEstimate,
    PriceSource,
    SweepPlan,
    TypeEstimate,
)
from jobs.providers.base import Capacity, InstanceType, Provider
from jobs.providers.errors import ProviderError
from jobs.providers.local import INSTANCE_TYPE as LOCAL_TYPE
from jobs.providers.local import REGION as LOCAL_REGION
from jobs.providers.local import SPOT_PRICE_FRACTION
from jobs.spec import SweepSpec
from jobs.spot_choice import CLOUD_SETUP_HOURS, RATE_TABLES, spot_estimate
from jobs.throughput import (
    Throughput,
    estimate,
    gpu_device,
    lm_flops_per_token,
    model_shape,
    sae_flops_per_token,
)
from queue_app.jobspec import JobConfig, JobSpec, ProviderSpec


def plan_sweep(spec: SweepSpec, provider: Provider | None, today: date | None = None) -> SweepPlan:
    """Plan `spec`: live prices from `provider` when given (the catalog when it fails or is
    None), the spec's own price for the local provider. Raises SpecError for a bad grid."""
    jobs = spec.expand()
    types, source, as_of, warnings = _offers(spec, provider, today)
    spot_offered = any(t.spot_price_per_hour is not None for t in types)
    capacity = capacity_for(jobs[0].config, 0, spot_offered)
    if not spot_offered:
        warnings.append(
            "spot prices are live only: estimated on-demand"
            if spec.provider.name in RATE_TABLES
            else f"{spec.provider.name} offers no spot instances: jobs run on-demand"
        )
    setup = _setup_hours(spec.provider)
    estimates = [_job_estimate(job, spec.provider, types, capacity, setup) for job in jobs]
    warnings += _job_warnings(jobs, spec.provider, types)
    rows = _type_rows(jobs, spec.provider, types, setup)
    first = candidates(jobs[0].config, spec.provider, types, capacity)
    rates = RATE_TABLES.get(spec.provider.name)
    costs = [e.cost_usd for e in estimates]
    hours = [e.hours for e in estimates]
    packs = _pack_estimates(spec, jobs, estimates, types, setup)
    pack_costs = [p.cost_usd for p in packs]
    pack_hours = [p.hours for p in packs]
    return SweepPlan(
        sweep=spec.name,
        provider=spec.provider.name,
        capacity=capacity,
        price_source=source,
        prices_as_of=as_of,
        setup_hours_per_job=setup,
        warnings=warnings,
        candidates=rows,
        pick=first[0] if first else None,
        jobs=estimates,
        estimated_hours=None if None in hours else sum(h or 0 for h in hours),
        estimated_cost_usd=None if None in costs else sum(c or 0 for c in costs),
        budget_usd=spec.budget_usd,
        preemption_rates_as_of=rates.as_of if rates else None,
        max_pack_size=spec.max_pack_size,
        packs=packs,
        packed_hours=None if None in pack_hours else sum(h or 0 for h in pack_hours),
        packed_cost_usd=None if None in pack_costs else sum(c or 0 for c in pack_costs),
    )


def _pack_estimates(
    spec: SweepSpec,
    jobs: list[JobSpec],
    estimates: list[JobEstimate],
    types: list[InstanceType],
    setup: float,
) -> list[PackEstimate]:
    """The sweep's packs (jobs.packs), each priced on its first job's pick. SpecError when
    `pack_all` asks for one pack that cannot be."""
    if spec.pack_all:
        check_one_pack(jobs, spec.max_pack_size)
    by_name = {t.name: t for t in types}
    picked = {e.index: by_name.get(e.instance_type or "") for e in estimates}
    # A type without GPU memory (the local CPU) holds a pack in host memory: no memory cut.
    capacity = {index: (t.gpu_memory_gb or None) if t else None for index, t in picked.items()}
    shapes = {model: model_shape(model) for model in {j.config.model for j in jobs}}
    packs = group_jobs(jobs, spec.max_pack_size, shapes, capacity)
    by_index = {j.index: j for j in jobs}
    prices = {e.index: e.price_per_hour for e in estimates}
    return [
        _pack_estimate(p, [by_index[i].config for i in p.jobs], picked[p.jobs[0]], prices, setup)
        for p in packs
    ]


def _pack_estimate(
    pack: PlannedPack,
    configs: list[JobConfig],
    itype: InstanceType | None,
    prices: dict[int, float | None],
    setup: float,
) -> PackEstimate:
    hours = None
    one = _throughput(configs[0], itype) if itype else None
    shape = model_shape(configs[0].model)
    if one is not None and shape is not None:
        effective = one.tokens_per_s * one.flops_per_token
        deepest = max(configs, key=lambda c: c.layer)
        flops = lm_flops_per_token(deepest, shape)
        flops += sum(sae_flops_per_token(c.sae, shape.d_model) for c in configs)
        hours = configs[0].train.total_tokens * flops / effective / 3600 + setup
    price = prices[pack.jobs[0]]
    return PackEstimate(
        jobs=pack.jobs,
        layers=pack.layers,
        memory_gb=pack.memory_gb,
        instance_type=itype.name if itype else None,
        hours=hours,
        cost_usd=None if hours is None or price is None else hours * price,
        split=pack.split,
    )


def _offers(
    spec: SweepSpec, provider: Provider | None, today: date | None
) -> tuple[list[InstanceType], PriceSource, date | None, list[str]]:
    if spec.provider.name == "local":
        price = spec.provider.price_per_hour or 0.0
        local = InstanceType(
            name=LOCAL_TYPE,
            description="this machine (CPU)",
            price_per_hour=price,
            spot_price_per_hour=price * SPOT_PRICE_FRACTION,
            regions=[LOCAL_REGION],
        )
        return provider.instance_types() if provider else [local], "spec", None, []
    warnings = []
    catalog = CATALOGS[spec.provider.name]
    if provider is not None:
        try:
            types = provider.instance_types()
        except ProviderError as exc:
            warnings.append(f"live prices unavailable ({exc}); using the built-in catalog")
        else:
            if spec.provider.name == "aws":  # live spot prices, on-demand from the catalog
                return types, "live", catalog.as_of, [catalog.stale_warning(today)]
            return types, "live", today or date.today(), []
    warnings.append(catalog.stale_warning(today))
    warnings.append("capacity unknown: catalog regions are where the type was listed")
    return catalog.instance_types(), "catalog", catalog.as_of, warnings


def _setup_hours(provider_spec: ProviderSpec) -> float:
    if provider_spec.name == "local":
        return provider_spec.boot_delay_s / 3600
    return CLOUD_SETUP_HOURS


def _throughput(config: JobConfig, itype: InstanceType) -> Throughput | None:
    shape = model_shape(config.model)
    if shape is None:
        return None
    device = gpu_device(itype.gpu_description or itype.description) if itype.gpu_count else None
    if itype.gpu_count and device is None:
        return None
    return estimate(config, shape, device)


def _hours(config: JobConfig, throughput: Throughput | None, setup: float) -> float | None:
    if throughput is None:
        return None
    return config.train.total_tokens / throughput.tokens_per_s / 3600 + setup


def _job_estimate(
    job: JobSpec,
    provider_spec: ProviderSpec,
    types: list[InstanceType],
    capacity: Capacity,
    setup: float,
) -> JobEstimate:
    config = job.config
    found = candidates(config, provider_spec, types, capacity)
    if found:
        itype = next(t for t in types if t.name == found[0].instance_type)
        region: str | None = found[0].region
        price = found[0].price_per_hour
    else:  # nothing has capacity now: price the cheapest type that fits
        fitting = sorted(
            allowed_types(config, provider_spec, types), key=lambda t: t.price_per_hour
        )
        if not fitting:
            return JobEstimate(
                index=job.index,
                name=job.name,
                total_tokens=config.train.total_tokens,
                instance_type=None,
                region=None,
                price_per_hour=None,
                tokens_per_s=None,
                hours=None,
                cost_usd=None,
                basis="no instance type fits",
            )
        itype, region, price = fitting[0], None, fitting[0].price_per_hour
    throughput = _throughput(config, itype)
    hours = _hours(config, throughput, setup)
    return JobEstimate(
        index=job.index,
        name=job.name,
        total_tokens=config.train.total_tokens,
        instance_type=itype.name,
        region=region,
        price_per_hour=price,
        tokens_per_s=throughput.tokens_per_s if throughput else None,
        hours=hours,
        cost_usd=None if hours is None else hours * price,
        basis=throughput.basis if throughput else "no throughput estimate",
    )


def _type_rows(
    jobs: list[JobSpec], provider_spec: ProviderSpec, types: list[InstanceType], setup: float
) -> list[TypeEstimate]:
    rows = []
    for itype in sorted(types, key=lambda t: (t.price_per_hour, t.name)):
        if not all(usable(j.config, provider_spec, itype) for j in jobs):
            continue
        hours = [_hours(j.config, _throughput(j.config, itype), setup) for j in jobs]
        known = None not in hours
        total = sum(h or 0 for h in hours)
        first = _throughput(jobs[0].config, itype)
        regions = [r for r in itype.regions if r in (provider_spec.regions or itype.regions)]
        spot = spot_estimate(jobs[0].config, provider_spec, itype)
        rows.append(
            TypeEstimate(
                instance_type=itype.name,
                description=itype.description,
                gpu_memory_gb=itype.gpu_memory_gb,
                price_per_hour=itype.price_per_hour,
                regions=regions,
                tokens_per_s=first.tokens_per_s if first else None,
                hours_per_job=hours[0],
                cost_per_job_usd=None if hours[0] is None else hours[0] * itype.price_per_hour,
                sweep_cost_usd=total * itype.price_per_hour if known else None,
                spot_price_per_hour=itype.spot_price_per_hour,
                expected_spot_price_per_hour=spot.expected_price_per_hour if spot else None,
            )
        )
    return rows


def _job_warnings(
    jobs: list[JobSpec], provider_spec: ProviderSpec, types: list[InstanceType]
) -> list[str]:
    warnings: list[str] = []
    for model in sorted({j.config.model for j in jobs}):
        shape = model_shape(model)
        if shape is None:
            warnings.append(
                f"no architecture known for model {model}: hours and cost are not estimated "
                "(use a local model directory with a config.json, or add it to "
                "jobs/throughput.py KNOWN_MODELS)"
            )
            continue
        too_deep = sorted({j.config.layer for j in jobs if j.config.layer >= shape.n_layers})
        if too_deep:
            warnings.append(f"{model} has {shape.n_layers} layers; layer {too_deep} is beyond it")
    if not any(allowed_types(j.config, provider_spec, types) for j in jobs):
        need = jobs[0].config.gpu
        warnings.append(
            f"no {provider_spec.name} instance type fits: jobs need {need.count} GPU(s) with "
            f"{need.min_vram_gb:g} GB each"
        )
    if provider_spec.name == "local" and any(j.config.gpu.require_gpu for j in jobs):
        warnings.append(
            "local estimates use a CPU figure; jobs with gpu.require_gpu: true fail "
            "verification on a machine without a CUDA GPU"
        )
    return warnings
