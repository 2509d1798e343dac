"""Splitting a pack that ran out of GPU memory at its smallest micro-batch (jobs.oom).

`plan_split` decides with the memory model that sized the packs at submit (jobs.packs):
- the whole pack fits the largest allowed type with more GPU memory than the one that ran
  out, or the model's shape is unknown: no split, the pack moves as a whole (jobs.oom);
- it does not: the members are cut, in grid order, into packs that each fit that largest type
  (jobs.packs.group_jobs), each to run on the smallest larger type it fits;
- nothing larger is allowed: the members are cut into two halves on the same GPU type (a
  smaller pack needs less memory), down to packs of one, which FAIL as a single job does.

`split_pack` re-forms the members: the pack job keeps the first group and resumes as
attempt+1, as after a preemption; each other group becomes a new pack job of the sweep
(`<sweep>-pNNN`), PREEMPTED on the same attempt number, whose chain (sent beside the sweep
chord) starts attempt+1 at provision. So every group resumes through the path a preempted
pack takes: its bootstrap gives each member its own newest checkpoint in the store (all
written at one stream position). Each member keeps its record, its chord slot (`follow_pack`
polls the member, whichever pack drives it) and its cost (the instances it trains on); its
attempt notes why it split. Halvings start again from the members' own settings, and the
split counts as a memory move, not an attempt. `complete_split` hands the new pack jobs their
members and sends their chains; a stage redelivered after a crash mid-split calls it again
(jobs.stage_base), so a split is never left half-done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from jobs.oom import MovePlan, memory_move_fields, note_out_of_memory, smallest_micro_batch
from jobs.packs import USABLE_MEMORY_FRACTION, group_jobs, memory_gb
from jobs.pipeline import JobRef, stage_chain
from jobs.throughput import ModelShape, model_shape
from queue_app.pack_mirror import add_packs, following_members
from queue_app.records import AttemptRecord, JobRecord
from queue_app.statemachine import JobState
from queue_app.store import Store


@dataclass(frozen=True)
class SplitPlan:
    """How a pack that ran out of memory splits."""

    groups: list[list[str]]
    """The member ids of each new pack, in grid order; the pack job keeps the first."""
    memory_above_gb: list[float | None]
    """Each group's `gpu_memory_above_gb`: its next attempts take types with more."""
    note: str
    """Why, for the attempts ("pack of 4 out of memory on ...; split into 2 packs of 2")."""


def pack_split_plan(store: Store, job: JobRecord, attempt: int, move: MovePlan) -> SplitPlan | None:
    """How `job`, out of memory at its smallest micro-batch in `attempt`, splits: None for a
    job that is not a pack, or a pack that does not split."""
    if not job.members:
        return None
    return plan_split(job, store.jobs(following_members(store, job.job_id, attempt)), move)


def plan_split(pack: JobRecord, members: list[JobRecord], move: MovePlan) -> SplitPlan | None:
    """How the pack of `members` (those still in it, grid order) splits after running out of
    memory at its smallest micro-batch (`move`: the larger types); None: it does not."""
    if len(members) < 2:
        return None
    configs = [m.job_spec.config for m in members]
    shape = model_shape(configs[0].model)
    if move.larger:
        largest = max(move.larger_gb)
        if shape is None or memory_gb(configs, shape) <= largest * USABLE_MEMORY_FRACTION:
            return None
        groups = _fitting_groups(members, shape, largest)
        needs = [memory_gb([m.job_spec.config for m in g], shape) for g in groups]
        floors: list[float | None] = [_memory_floor(move, need) for need in needs]
        where = f"on types with more GPU memory than {move.ran_out_on}"
    else:
        half = (len(members) + 1) // 2
        groups = [members[:half], members[half:]]
        floors = [pack.gpu_memory_above_gb] * 2
        where = "on the same GPU type (none larger is allowed)"
    smallest = smallest_micro_batch(pack.job_spec.config)
    note = (
        f"pack of {len(members)} out of memory on {move.ran_out_on} at micro-batch {smallest} "
        f"tokens; split into {_sizes(groups)} {where}"
    )
    return SplitPlan([[m.job_id for m in g] for g in groups], floors, note)


def _fitting_groups(
    members: list[JobRecord], shape: ModelShape, capacity_gb: float
) -> list[list[JobRecord]]:
    """`members` cut in grid order into packs that fit `capacity_gb` (as submit cuts them)."""
    specs = [m.job_spec for m in members]
    by_index = {m.index: m for m in members}
    planned = group_jobs(
        specs, len(specs), {specs[0].config.model: shape}, {s.index: capacity_gb for s in specs}
    )
    return [[by_index[i] for i in p.jobs] for p in planned]


def _memory_floor(move: MovePlan, need_gb: float) -> float:
    """The `gpu_memory_above_gb` that leaves the smallest larger type a pack needing `need_gb`
    fits (the largest when none does) and every type above it."""
    fitting = sorted(g for g in move.larger_gb if need_gb <= g * USABLE_MEMORY_FRACTION)
    fit = fitting[0] if fitting else max(move.larger_gb)
    return max([move.memory_gb, *(g for g in move.larger_gb if g < fit)])


def _sizes(groups: list[list[JobRecord]]) -> str:
    """ "2 packs of 2", or "packs of 3, 1"."""
    sizes = [len(g) for g in groups]
    if len(set(sizes)) == 1:
        return f"{len(sizes)} packs of {sizes[0]}"
    return "packs of " + ", ".join(map(str, sizes))


def split_pack(store: Store, ref: JobRef, plan: SplitPlan) -> list[str]:
    """Re-form the members of pack `ref.job_id`, PREEMPTED at `ref.attempt`, as `plan` says
    (see the module docstring); the caller resumes the pack job itself. Returns the new pack
    jobs' ids, whose chains are sent."""
    attempt, pack = ref.attempt, store.job(ref.job_id)
    why = pack.reason or plan.note
    owners = [ref.job_id, *(m for group in plan.groups for m in group)]
    note_out_of_memory(store, attempt, owners, plan.note)
    fresh = memory_move_fields(pack)
    now = time.time()
    new_packs = []
    for group, above in zip(plan.groups[1:], plan.memory_above_gb[1:], strict=True):
        records = store.jobs(group)
        record = JobRecord.model_validate(
            {
                **pack.model_dump(),
                **fresh,
                "spec": records[0].spec,  # a pack job runs on its first member's spec
                "index": records[0].index,
                "name": _pack_name(records),
                "members": group,
                "split_from": ref.job_id,
                "split_at": attempt,
                "gpu_memory_above_gb": above,
                "instance_id": None,
                "progress": {},
                "created_at": now,
                "updated_at": now,
            }
        )
        formed = AttemptRecord(
            job_id=record.job_id,
            attempt=attempt,
            started_at=now,
            ended_at=now,
            end_reason=why,
            out_of_memory=[plan.note],
        )
        new_packs.append((record, formed))
    store.update_job(
        pack.job_id,
        attempt,
        **fresh,
        name=_pack_name(store.jobs(plan.groups[0])),
        gpu_memory_above_gb=plan.memory_above_gb[0],
    )
    add_packs(store, ref.sweep_id, new_packs)
    return complete_split(store, ref, pack)


def complete_split(store: Store, ref: JobRef, pack: JobRecord) -> list[str]:
    """Hand each pack job that split from `pack` (the record of `ref.job_id`) at `ref.attempt`
    and still waits there its members, and send its chain; returns their ids. Idempotent: the
    stage that split calls it, and so does a redelivered copy of that stage after a crash,
    whichever step the crash cut short (a chain sent twice runs once: the second provision
    finds the attempt begun and passes on)."""
    if not pack.members:
        return []
    others = [p for p in store.sweep(ref.sweep_id).pack_ids if p != ref.job_id]
    split_off = [
        job
        for job in store.jobs(others)
        if (job.split_from, job.split_at) == (ref.job_id, ref.attempt)
        and job.attempt == ref.attempt  # its own first attempt has not begun
        and job.state is JobState.PREEMPTED
    ]
    moved = {member for job in split_off for member in job.members}
    for job in split_off:
        for member in job.members:
            store.update_job(member, ref.attempt, pack_id=job.job_id)
    if moved & set(pack.members):
        kept = [m for m in pack.members if m not in moved]
        store.update_job(ref.job_id, ref.attempt, members=kept)
    for job in split_off:
        stage_chain(
            JobRef(job_id=job.job_id, attempt=ref.attempt + 1, sweep_id=ref.sweep_id)
        ).apply_async()
    return [job.job_id for job in split_off]


def _pack_name(members: list[JobRecord]) -> str:
    return "pack of " + "; ".join(m.name or m.job_id for m in members)
