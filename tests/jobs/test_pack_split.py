"""A pack out of GPU memory at its smallest micro-batch that fits no larger type whole splits
(jobs.pack_split): the decision, from the planner's memory model (which packs fit which type,
the split sizes, halves when nothing larger is allowed, a pack of one never splits), and the
re-forming of the members on the control plane (the pack job keeps the first group, each
other group becomes a new pack job that resumes its members from their own checkpoints)."""

from __future__ import annotations

import time

import pytest

import jobs.pack_split
from jobs.oom import MovePlan
from jobs.pack_split import SplitPlan, plan_split, split_pack
from jobs.provision import provision
from jobs.stages import follow_pack, supervise_training
from jobs.submission import job_records
from queue_app.records import JobRecord
from queue_app.statemachine import JobState
from tests.jobs.stage_world import StageWorld
from tests.support.planning import example, itype

S = JobState
K_GRID = {"sae.k": [16, 32, 64, 128]}
"""Llama 3.1 8B, 32,768 latents each: 1 member needs ~24.0 GB, 2 ~29.3, 3 ~34.7, 4 ~40.1
(jobs.packs.memory_gb; a type holds 90% of its memory)."""


def _members(grid: dict[str, list[object]] = K_GRID) -> list[JobRecord]:
    return job_records("sw1", example(grid=grid).expand(), time.time())


def _move(ran_out_gb: float, larger_gb: list[float]) -> MovePlan:
    return MovePlan(
        ran_out_on=f"gpu_{ran_out_gb:g} ({ran_out_gb:g} GB)",
        memory_gb=ran_out_gb,
        larger=[f"gpu_{g:g}" for g in larger_gb],
        larger_gb=larger_gb,
    )


def _split(members: list[JobRecord], move: MovePlan) -> tuple[list[list[int]], list, str] | None:
    plan = plan_split(members[0], members, move)
    if plan is None:
        return None
    index = {m.job_id: m.index for m in members}
    return [[index[j] for j in g] for g in plan.groups], plan.memory_above_gb, plan.note


def test_a_pack_that_fits_a_larger_type_whole_moves_as_one() -> None:
    assert _split(_members(), _move(24, [40, 80])) is None  # 40.1 GB fit 80 GB's 72


def test_a_pack_that_fits_no_larger_type_splits_into_packs_that_fit_the_largest() -> None:
    groups, floors, note = _split(_members(), _move(24, [40])) or ([], [], "")
    assert groups == [[0, 1, 2], [3]]  # 34.7 GB fit 40 GB's 36; all four (40.1) do not
    assert floors == [24, 24]
    assert note == (
        "pack of 4 out of memory on gpu_24 (24 GB) at micro-batch 1 tokens; split into "
        "packs of 3, 1 on types with more GPU memory than gpu_24 (24 GB)"
    )


def test_each_new_pack_goes_to_the_smallest_larger_type_it_fits() -> None:
    groups, floors, _ = _split(_members(), _move(24, [32, 40])) or ([], [], "")
    assert groups == [[0, 1, 2], [3]]
    assert floors == [32, 24]  # 34.7 GB skip 32 GB (28.8 usable); 24.0 GB fit it


def test_with_nothing_larger_allowed_the_pack_splits_in_halves_on_its_type() -> None:
    members = _members()
    members[0].gpu_memory_above_gb = 16  # its earlier moves' floor stays
    groups, floors, note = _split(members, _move(80, [])) or ([], [], "")
    assert (groups, floors) == ([[0, 1], [2, 3]], [16, 16])
    assert note.endswith("split into 2 packs of 2 on the same GPU type (none larger is allowed)")
    three = _members({"sae.k": [16, 32, 64]})
    assert (_split(three, _move(80, [])) or [[]])[0] == [[0, 1], [2]]
    assert (_split(three[:2], _move(80, [])) or [[]])[0] == [[0], [1]]


def test_a_pack_of_one_never_splits_and_an_unknown_model_moves_whole() -> None:
    assert _split(_members()[:1], _move(80, [])) is None
    unknown = _members({"sae.k": [16, 32, 64, 128], "model": ["no-such-org/no-such-model"]})
    assert _split(unknown, _move(24, [40])) is None
    assert _split(unknown, _move(24, [])) is not None  # halving needs no model


def _out_of_memory_at_the_floor(world: StageWorld, members: int) -> tuple[str, list[str]]:
    """A pack training on the only allowed type whose segment ran out of memory at its
    smallest micro-batch."""
    world.provider.types = [itype("gpu_1x_a100", 1.29, 40, ["r1"])]
    pack_id, member_ids = world.pack(members=members)
    instance = world.launch(pack_id, S.TRAINING, provider="lambda")
    world.store.update_instance(instance.instance_id, instance_type="gpu_1x_a100")
    world.store.update_job(pack_id, 1, micro_batch_halvings=3, lm_batch_halvings=1)
    world.training(pack_id)
    world.store.finish_segment(
        pack_id, 1, 1, "failed", segment_error="OutOfMemory: ...", segment_out_of_memory=True
    )
    return pack_id, member_ids


def test_the_split_pack_keeps_half_and_a_new_pack_job_resumes_the_rest(
    stage_world: StageWorld,
) -> None:
    pack_id, (a, b, c, d) = _out_of_memory_at_the_floor(stage_world, 4)
    delivery = stage_world.deliver(supervise_training, pack_id)
    assert delivery.replacement is not None  # the pack job itself: attempt 2, at once
    assert delivery.replacement.tasks[0].args[0]["attempt"] == 2

    sweep = stage_world.store.sweep(stage_world.job(a).sweep_id)
    new_id = sweep.pack_ids[1]
    assert sweep.pack_ids == [pack_id, new_id] and new_id.endswith("-p001")
    pack, new = stage_world.job(pack_id), stage_world.job(new_id)
    assert (pack.members, new.members) == ([a, b], [c, d])
    assert [stage_world.job(m).pack_id for m in (a, b, c, d)] == [pack_id] * 2 + [new_id] * 2
    for record in (pack, new):
        assert (record.state, record.attempt, record.memory_moves) == (S.PREEMPTED, 1, 1)
        assert (record.micro_batch_halvings, record.lm_batch_halvings) == (0, 0)
    assert new.name == "pack of k2; k3" and new.index == 2
    note = (
        "pack of 4 out of memory on gpu_1x_a100 (40 GB) at micro-batch 1 tokens; split into "
        "2 packs of 2 on the same GPU type (none larger is allowed)"
    )
    for owner in (pack_id, new_id, a, b, c, d):  # each member's attempt says why it split
        assert stage_world.attempt(owner).out_of_memory == [note]
        assert stage_world.job(owner).state is S.PREEMPTED
    assert (pack.reason or "").endswith(note) and stage_world.attempt(new_id).end_reason
    [sent] = [t for t in stage_world.sent if t["name"] == "saefleet.stage.provision"]
    assert sent["args"][0] == {"job_id": new_id, "attempt": 2, "sweep_id": sweep.sweep_id}

    # Each pack job's provision begins attempt 2 for its own members only.
    assert stage_world.deliver(provision, new_id, attempt=2).state == "SUCCESS"
    assert stage_world.deliver(provision, pack_id, attempt=2).state == "SUCCESS"
    for owner, members in ((pack_id, [a, b]), (new_id, [c, d])):
        instance = stage_world.instance(stage_world.attempt(owner, 2).instance_id or "")
        assert instance.job_id == owner and instance.members == members
        assert all(stage_world.job(m).attempt == 2 for m in members)
    # A member's chord slot waits for the member, whichever pack drives it.
    assert stage_world.deliver(follow_pack, c).state == "RETRY"


@pytest.mark.parametrize("members", [2, 1])
def test_halves_go_down_to_single_jobs_and_a_single_job_at_its_floor_fails(
    stage_world: StageWorld, members: int
) -> None:
    pack_id, member_ids = _out_of_memory_at_the_floor(stage_world, members)
    stage_world.deliver(supervise_training, pack_id)
    if members == 2:
        new_id = stage_world.store.sweep(stage_world.job(pack_id).sweep_id).pack_ids[1]
        assert stage_world.job(pack_id).members == member_ids[:1]
        assert stage_world.job(new_id).members == member_ids[1:]
        return
    reason = stage_world.failure(pack_id)
    assert "no allowed type has more GPU memory than gpu_1x_a100 (40 GB)" in reason
    assert stage_world.job(member_ids[0]).state is S.FAILED


def test_each_new_pack_takes_its_own_types_and_its_first_members_spec(
    stage_world: StageWorld,
) -> None:
    pack_id, (a, b, c) = stage_world.pack(members=3, own={1: {"sae.k": 4}})
    stage_world.launch(pack_id, S.TRAINING)
    stage_world.store.transition(pack_id, 1, S.PREEMPTED, reason="out of memory; split")
    plan = SplitPlan([[a], [b, c]], [40, 24], "split into packs of 1, 2")
    [new_id] = split_pack(stage_world.store, stage_world.ref(pack_id), plan)
    pack, new = stage_world.job(pack_id), stage_world.job(new_id)
    assert (pack.members, pack.gpu_memory_above_gb, pack.name) == ([a], 40, "pack of k0")
    assert (new.members, new.gpu_memory_above_gb, new.name) == ([b, c], 24, "pack of k1; k2")
    assert new.job_spec.config.sae.k == 4 and new.reason == "out of memory; split"
    assert stage_world.store.events(new_id)[-1]["to"] == "PREEMPTED"


class _WorkerDied(BaseException):
    """The control worker dying mid-task (not an error the stage could handle)."""


def test_a_split_cut_short_by_a_crash_is_completed_by_the_redelivered_stage(
    stage_world: StageWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack_id, (a, b, c, d) = _out_of_memory_at_the_floor(stage_world, 4)

    def die(*_: object) -> list[str]:
        raise _WorkerDied()

    with monkeypatch.context() as crash, pytest.raises(_WorkerDied):
        crash.setattr(jobs.pack_split, "complete_split", die)  # once the new pack is written
        stage_world.deliver(supervise_training, pack_id)
    [new_id] = stage_world.store.sweep(stage_world.job(a).sweep_id).pack_ids[1:]
    assert stage_world.job(new_id).state is S.PREEMPTED
    assert stage_world.job(c).pack_id == pack_id and stage_world.sent == []

    redelivered = stage_world.deliver(supervise_training, pack_id)
    assert redelivered.replacement is not None  # the pack job itself resumes as attempt 2
    assert redelivered.replacement.tasks[0].args[0]["attempt"] == 2
    assert (stage_world.job(pack_id).members, stage_world.job(new_id).members) == ([a, b], [c, d])
    assert [stage_world.job(m).pack_id for m in (c, d)] == [new_id, new_id]
    [sent] = [t for t in stage_world.sent if t["name"] == "saefleet.stage.provision"]
    assert sent["args"][0]["job_id"] == new_id and sent["args"][0]["attempt"] == 2
    # Once the new pack's own attempt has begun, a later look sends nothing again.
    assert stage_world.deliver(provision, new_id, attempt=2).state == "SUCCESS"
    ref = stage_world.ref(pack_id, 1)
    assert jobs.pack_split.complete_split(stage_world.store, ref, stage_world.job(pack_id)) == []
