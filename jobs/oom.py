"""Out of GPU memory, handled as the seed guide's troubleshooting does by hand: first a smaller
batch, then a larger GPU.

1. Half the micro-batch, twice the accumulation (the same effective batch, the same math):
   the trainer does it in process (sae.pack) and restores its newest checkpoint; the GPU-side
   worker records each halving at once (`record_halving`) in the job's record
   (`micro_batch_halvings`, which every later segment and attempt trains with, so it survives
   a preemption) and as a line on the attempt (`AttemptRecord.out_of_memory`). An
   out-of-memory in the LM forward halves the forward's batch first (`lm_batch_halvings`,
   down to 1 context; sae.oom).
2. Once the micro-batch cannot be halved (it must divide train.batch_tokens), the segment
   fails with `segment_out_of_memory`, supervise raises `jobs.errors.OutOfGPUMemory`, and the
   stage wrapper (jobs.stage_base) ends the attempt and starts the next one at once, from the
   newest checkpoint kept in the store, on a type with more GPU memory per GPU (`plan_move`:
   the allowed types, i.e. the sweep's provider.instance_types and gpu needs, larger than the
   one that ran out, cheapest first as placement orders them). The job's
   `gpu_memory_above_gb` keeps later attempts there; its micro-batch and LM batch start again
   from its own settings (the memory is what changed). These attempts do not count against
   max_attempts.
3. Nothing larger is allowed: the job FAILS, naming the micro-batches and types it tried.

A pack moves as a whole (its members follow the pack job) when the planner's memory model
says it fits a larger allowed type; otherwise it splits into packs that do (or, with nothing
larger, into halves on the same type) and each resumes its members from their own newest
checkpoints (jobs.pack_split). A pack of one never splits: it moves or FAILS as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.placement import allowed_types
from jobs.providers import Provider
from queue_app.jobspec import JobConfig, ProviderSpec
from queue_app.pack_mirror import following_members
from queue_app.records import JobRecord
from queue_app.store import Store


def record_halving(store: Store, job_id: str, attempt: int, restart: dict[str, Any]) -> None:
    """Keep one in-process halving (sae.pack's `oom_restarts` entry: of the LM forward's batch
    or of the micro-batch) for every later segment and attempt, and note it on the attempt (a
    pack's: and on each member's attempt)."""
    job = store.job(job_id)
    if restart.get("halved") == "lm_batch":
        store.update_job(job_id, attempt, lm_batch_halvings=job.lm_batch_halvings + 1)
    else:
        store.update_job(job_id, attempt, micro_batch_halvings=job.micro_batch_halvings + 1)
    members = following_members(store, job_id, attempt) if job.members else []
    note_out_of_memory(store, attempt, [job_id, *members], restart["note"])


def note_out_of_memory(store: Store, attempt: int, owners: list[str], note: str) -> None:
    """Add `note` to the out-of-memory lines of each owner's `attempt`."""
    for owner in owners:
        notes = store.attempt(owner, attempt).out_of_memory
        store.update_attempt(owner, attempt, out_of_memory=[*notes, note])


def memory_move_fields(job: JobRecord) -> dict[str, Any]:
    """What a move for memory (a larger type, or a pack split) sets on a job: the halvings
    start again from its own settings, since the memory is what changed, and the move counts
    as a memory move, not against max_attempts."""
    return {"micro_batch_halvings": 0, "lm_batch_halvings": 0, "memory_moves": job.memory_moves + 1}


@dataclass(frozen=True)
class MovePlan:
    """Where a job that ran out of memory at its smallest micro-batch goes next."""

    ran_out_on: str
    """The type that ran out, with its GPU memory ("gpu_1x_a10 (24 GB)")."""
    memory_gb: float
    """Its GPU memory per GPU (0 when the provider does not say): the new floor."""
    larger: list[str]
    """Allowed types with more GPU memory, cheapest first (empty: nowhere to go)."""
    larger_gb: list[float]
    """Their GPU memory per GPU, in the same order."""


def plan_move(
    provider: Provider, config: JobConfig, provider_spec: ProviderSpec, instance_type: str | None
) -> MovePlan:
    """The allowed types larger than `instance_type` (a type the provider does not list counts
    as 0 GB, so any type with GPU memory is larger)."""
    types = provider.instance_types()
    memory = next((t.gpu_memory_gb for t in types if t.name == instance_type), 0.0)
    larger = sorted(
        (t for t in allowed_types(config, provider_spec, types) if t.gpu_memory_gb > memory),
        key=lambda t: (t.price_per_hour, t.name),
    )
    return MovePlan(
        ran_out_on=f"{instance_type or 'an unknown type'} ({memory:g} GB)",
        memory_gb=memory,
        larger=[t.name for t in larger],
        larger_gb=[t.gpu_memory_gb for t in larger],
    )


def nothing_larger(
    store: Store, job_id: str, config: JobConfig, plan: MovePlan, reason: str
) -> str:
    """Why a job that ran out of memory at its smallest micro-batch fails: what it tried."""
    types = ", ".join(types_tried(store, job_id)) or "no instance"
    return (
        f"{reason}; tried micro-batches {micro_batches_tried(config)} on {types}, and no "
        f"allowed type has more GPU memory than {plan.ran_out_on} (provider.instance_types, gpu)"
    )


def types_tried(store: Store, job_id: str) -> list[str]:
    """The instance types the job's attempts ran on, in order, each once."""
    tried: list[str] = []
    for record in store.attempts(job_id):
        if record.instance_id is None:
            continue
        itype = store.instance(record.instance_id).instance_type or "an unknown type"
        if itype not in tried:
            tried.append(itype)
    return tried


def micro_batches_tried(config: JobConfig) -> str:
    """The micro-batches from the job's own down to the smallest, as halving walks them."""
    return " -> ".join(map(str, _micro_batch_walk(config))) + " tokens"


def smallest_micro_batch(config: JobConfig) -> int:
    """Where halving the job's micro-batch stops."""
    return _micro_batch_walk(config)[-1]


def _micro_batch_walk(config: JobConfig) -> list[int]:
    sizes, size = [], config.train.micro_batch_tokens
    while True:
        sizes.append(size)
        if size % 2:  # half of it would not divide the batch
            return sizes
        size //= 2
