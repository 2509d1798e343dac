"""Out of GPU memory at the smallest micro-batch (jobs.oom), on the control plane: the job moves
to the cheapest allowed type with more GPU memory, with no back-off and without using up an
attempt, its micro-batch starting again from its own; its next provision launches only on
such a type; with nothing larger allowed it FAILS naming what it tried. A pack keeps its
halvings and moves as one, its members following it. Halving itself happens
in the trainer (tests/sae/test_pack.py) and is recorded by the worker
(tests/jobs/test_training_task.py)."""

from __future__ import annotations

import pytest

from jobs.oom import micro_batches_tried, plan_move, record_halving
from jobs.providers import InstanceStatus
from jobs.provision import provision
from jobs.stages import supervise_training
from queue_app.jobspec import ProviderSpec
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState
from tests.jobs.stage_world import StageWorld
from tests.support.planning import StaticProvider, config, itype

S = JobState
TYPES = [
    itype("gpu_1x_a10", 0.75, 24, ["r1"]),
    itype("gpu_1x_a100_80gb", 1.79, 80, ["r1"]),
    itype("gpu_1x_a100", 1.29, 40, ["r1"]),
]


def _out_of_memory_on(world: StageWorld, instance_type: str, **job: object) -> InstanceRecord:
    """A job training on `instance_type` whose first segment ran out of memory at the smallest
    micro-batch, after two halvings on the way down."""
    world.provider.types = list(TYPES)
    job_id = world.sweep(**job)
    instance = world.launch(job_id, S.TRAINING, provider="lambda")
    world.store.update_instance(instance.instance_id, instance_type=instance_type)
    world.store.update_job(job_id, 1, micro_batch_halvings=2)
    world.training(job_id)
    world.store.finish_segment(
        job_id,
        1,
        1,
        "failed",
        segment_error="OutOfMemory: out of memory at a micro-batch of 128 tokens",
        segment_out_of_memory=True,
    )
    return world.instance(instance.instance_id)


def test_the_next_attempt_goes_to_the_cheapest_larger_type_at_once(
    stage_world: StageWorld,
) -> None:
    instance = _out_of_memory_on(stage_world, "gpu_1x_a10", max_attempts=1)
    job_id = instance.job_id
    delivery = stage_world.deliver(supervise_training, job_id)
    assert delivery.replacement is not None  # attempt 2, though max_attempts is 1
    head = delivery.replacement.tasks[0]
    assert (head.args[0]["attempt"], head.options.get("countdown")) == (2, None)
    job = stage_world.job(job_id)
    assert (job.state, job.preemptions, job.memory_moves) == (S.PREEMPTED, 0, 1)
    assert (job.gpu_memory_above_gb, job.micro_batch_halvings) == (24, 0)
    why = stage_world.attempt(job_id).out_of_memory[-1]
    assert why.startswith("supervise_training: training segment 1: OutOfMemory")
    assert why.endswith("next attempt on a type with more GPU memory than gpu_1x_a10 (24 GB)")
    assert stage_world.attempt(job_id).end_reason == why == job.reason
    assert stage_world.provider.instances[instance.instance_id].status is InstanceStatus.TERMINATED

    assert stage_world.deliver(provision, job_id, attempt=2).state == "SUCCESS"
    launched = stage_world.instance(stage_world.attempt(job_id, 2).instance_id)
    assert launched.instance_type == "gpu_1x_a100"  # 40 GB at $1.29 before 80 GB at $1.79


def test_with_no_larger_type_allowed_the_job_fails_naming_what_it_tried(
    stage_world: StageWorld,
) -> None:
    instance = _out_of_memory_on(
        stage_world, "gpu_1x_a100", **{"train.batch_tokens": 512, "train.grad_accum_steps": 4}
    )
    stage_world.provider.types = [t for t in TYPES if t.gpu_memory_gb <= 40]  # none larger
    assert stage_world.deliver(supervise_training, instance.job_id).state == "SUCCESS"
    reason = stage_world.failure(instance.job_id, instance)
    assert "tried micro-batches 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1 tokens" in reason
    assert "on gpu_1x_a100, and no allowed type has more GPU memory than" in reason
    assert reason.endswith("gpu_1x_a100 (40 GB) (provider.instance_types, gpu)")
    assert stage_world.job(instance.job_id).memory_moves == 0


def test_only_allowed_types_with_more_memory_are_candidates() -> None:
    provider = StaticProvider(TYPES)
    assert plan_move(provider, config(), ProviderSpec(name="lambda"), "gpu_1x_a10").larger == [
        "gpu_1x_a100",
        "gpu_1x_a100_80gb",
    ]
    narrowed = ProviderSpec(name="lambda", instance_types=["gpu_1x_a10", "gpu_1x_a100"])
    plan = plan_move(provider, config(), narrowed, "gpu_1x_a100")
    assert (plan.larger, plan.memory_gb) == ([], 40)
    unknown = plan_move(provider, config(), ProviderSpec(name="lambda"), None)
    assert unknown.ran_out_on == "an unknown type (0 GB)"
    assert unknown.larger == ["gpu_1x_a100", "gpu_1x_a100_80gb"]  # 24 GB < gpu.min_vram_gb


@pytest.mark.parametrize(
    ("batch", "accum", "walk"),
    [
        (512, 1, "512 -> 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1"),
        (96, 2, "48 -> 24 -> 12 -> 6 -> 3"),
    ],
)
def test_the_micro_batches_tried_end_where_halving_stops(batch: int, accum: int, walk: str) -> None:
    train = config().train.model_copy(update={"batch_tokens": batch, "grad_accum_steps": accum})
    assert micro_batches_tried(config(train=train)) == f"{walk} tokens"


def test_a_pack_keeps_its_halvings_and_moves_with_its_members(stage_world: StageWorld) -> None:
    stage_world.provider.types = list(TYPES)
    pack_id, members = stage_world.pack(members=2)
    instance = stage_world.launch(pack_id, S.TRAINING, provider="lambda")
    stage_world.store.update_instance(instance.instance_id, instance_type="gpu_1x_a100")
    note = "out of memory at step 9; micro-batch 512 -> 256 tokens"
    record_halving(stage_world.store, pack_id, 1, {"at_step": 9, "note": note})
    assert stage_world.job(pack_id).micro_batch_halvings == 1
    assert all(stage_world.attempt(m).out_of_memory == [note] for m in [pack_id, *members])

    stage_world.training(pack_id)
    stage_world.store.finish_segment(
        pack_id, 1, 1, "failed", segment_error="OutOfMemory: ...", segment_out_of_memory=True
    )
    assert stage_world.deliver(supervise_training, pack_id).replacement is not None
    pack = stage_world.job(pack_id)
    assert (pack.gpu_memory_above_gb, pack.micro_batch_halvings) == (40, 0)
    assert {stage_world.job(m).state for m in members} == {S.PREEMPTED}
