"""Which jobs of a sweep may share one activation stream, and how they split into packs.

Jobs share a stream when their training runs do (sae.pack_rules.STREAM_FIELDS: model, dataset
and filters, context length, token budget, batch and shuffle sizes, seed, LM dtype and batch,
normalisation, held-out sizes; the layer may differ, one forward reaches every layer of a
model) and they ask for the same instance (INSTANCE_FIELDS). A group of such jobs, in grid
order, is cut into packs of at most `max_pack_size` whose estimated GPU memory fits the
instance type the planner picks; each cut says why it was made.

GPU memory of a pack (an estimate; the constants below say what it counts):
    LM weights (every decoder layer, + LM_EMBEDDING_MARGIN) in the LM dtype
    + per distinct layer, the shuffle buffer of activations (bf16)
    + per member, the SAE's fp32 weights, gradients and two Adam moments (16 bytes a parameter)
      and its micro-batch's dense encoder pre-activations and their gradient (fp32)
    + CUDA_OVERHEAD_GB (context, allocator slack, the forward's own activations)
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from jobs.spec import SpecError
from jobs.throughput import ModelShape
from queue_app.jobspec import JobConfig, JobSpec
from sae.pack_rules import STREAM_FIELDS, field_value

INSTANCE_FIELDS = (
    "gpu.min_vram_gb",
    "gpu.count",
    "gpu.require_gpu",
    "capacity",
    "segment_minutes",
    "max_preemptions",
    "max_attempts",
    "max_wait_for_capacity_s",
)
"""JobConfig fields that decide the instance and how its attempts run (one per pack)."""
SHARED_FIELDS = STREAM_FIELDS + INSTANCE_FIELDS
LM_EMBEDDING_MARGIN = 0.15
"""Embeddings and the LM head on top of the decoder layers (Llama 3.1 8B: 1.05 B of 8.0 B)."""
CUDA_OVERHEAD_GB = 2.0
USABLE_MEMORY_FRACTION = 0.9
"""Share of an instance's GPU memory a pack may plan to use."""
_GB = 1e9


class PlannedPack(BaseModel):
    """Jobs that run as one pack on one instance."""

    model_config = ConfigDict(frozen=True)

    jobs: list[int]
    """Grid indices of the members."""
    layers: list[int]
    memory_gb: float | None
    """Estimated GPU memory (None: the model's shape is unknown)."""
    split: str | None
    """Why this pack ends where it does, when the next job of its group is in another pack."""


def share_key(config: JobConfig) -> tuple[object, ...]:
    """Equal for two jobs exactly when they may share one stream on one instance."""
    return tuple(field_value(config, name) for name in SHARED_FIELDS)


def first_difference(a: JobConfig, b: JobConfig) -> str | None:
    """The first field (dotted) in which two jobs cannot share a stream, or None."""
    return next((f for f in SHARED_FIELDS if field_value(a, f) != field_value(b, f)), None)


def memory_gb(configs: list[JobConfig], shape: ModelShape) -> float:
    """Estimated GPU memory of one pack of `configs` (see the module docstring)."""
    first = configs[0]
    lm_bytes = 4 if first.train.lm_dtype == "fp32" else 2
    lm = shape.n_layers * shape.params_per_layer() * (1 + LM_EMBEDDING_MARGIN) * lm_bytes
    layers = {c.layer for c in configs}
    buffers = len(layers) * first.train.shuffle_buffer_tokens * shape.d_model * 2
    members = 0.0
    for config in configs:
        d_sae = config.sae.d_sae(shape.d_model)
        params = 2 * d_sae * shape.d_model + d_sae + shape.d_model
        members += 16 * params + 2 * 4 * config.train.micro_batch_tokens * d_sae
    return (lm + buffers + members) / _GB + CUDA_OVERHEAD_GB


def group_jobs(
    jobs: list[JobSpec],
    max_pack_size: int,
    shapes: Mapping[str, ModelShape | None],
    capacity_gb: Mapping[int, float | None],
) -> list[PlannedPack]:
    """Packs of `jobs` in grid order. `shapes[model]`: the model's shape; `capacity_gb[index]`:
    GPU memory of the instance type job `index` would run on (None: unknown; then memory
    does not split a pack)."""
    groups: dict[tuple[object, ...], list[JobSpec]] = {}
    for job in jobs:
        groups.setdefault(share_key(job.config), []).append(job)
    packs: list[PlannedPack] = []
    for group in groups.values():
        shape = shapes.get(group[0].config.model)
        current: list[JobSpec] = []
        for job in group:
            if current:
                reason = _split_reason(current, job, max_pack_size, shape, capacity_gb)
                if reason is not None:
                    packs.append(_pack(current, shape, reason))
                    current = []
            current.append(job)
        packs.append(_pack(current, shape, None))
    return sorted(packs, key=lambda p: p.jobs[0])


def _split_reason(
    current: list[JobSpec],
    job: JobSpec,
    max_pack_size: int,
    shape: ModelShape | None,
    capacity_gb: Mapping[int, float | None],
) -> str | None:
    if len(current) >= max_pack_size:
        return f"max_pack_size {max_pack_size}"
    limit = capacity_gb.get(current[0].index)
    if shape is None or limit is None:
        return None
    need = memory_gb([j.config for j in [*current, job]], shape)
    usable = limit * USABLE_MEMORY_FRACTION
    if need > usable:
        return (
            f"memory: {len(current) + 1} members need ~{need:.0f} GB, more than "
            f"{usable:.0f} GB ({USABLE_MEMORY_FRACTION:.0%} of {limit:g} GB)"
        )
    return None


def _pack(jobs: list[JobSpec], shape: ModelShape | None, split: str | None) -> PlannedPack:
    configs = [j.config for j in jobs]
    return PlannedPack(
        jobs=[j.index for j in jobs],
        layers=sorted({c.layer for c in configs}),
        memory_gb=None if shape is None else memory_gb(configs, shape),
        split=split,
    )


def check_one_pack(jobs: list[JobSpec], max_pack_size: int) -> None:
    """For `pack_all`: SpecError naming why `jobs` cannot run as one pack."""
    if len(jobs) > max_pack_size:
        raise SpecError(
            f"pack_all: the sweep's {len(jobs)} jobs exceed max_pack_size ({max_pack_size})"
        )
    for job in jobs[1:]:
        field = first_difference(jobs[0].config, job.config)
        if field is not None:
            ours, theirs = field_value(jobs[0].config, field), field_value(job.config, field)
            raise SpecError(
                f"pack_all: jobs {jobs[0].index} and {job.index} differ in job.{field} "
                f"({ours!r} vs {theirs!r}): they cannot share one activation stream"
            )
