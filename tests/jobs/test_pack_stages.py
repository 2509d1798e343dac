"""A pack on the control plane (jobs.pack_stages, queue_app.pack_mirror) against fake SSH and a
fake provider: the members follow the pack job's moves; after a segment every member's
checkpoint is pulled into its own place, a finished member is collected and SUCCEEDED, a
failed one FAILED, alone, and the next segment trains the rest; a member's chord slot hands
over its result once it and its cost share are final."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.stages import follow_pack, supervise_training
from jobs.tiny_sweep import tiny_job
from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld

S = JobState


def _pack(world: StageWorld, members: int = 3) -> tuple[str, list[str]]:
    """A sweep of `members` jobs in one pack job, QUEUED; returns (pack id, member ids)."""
    now = time.time()
    spec = {"config": tiny_job("tiny-lm", "c.jsonl"), "provider": {"name": "local"}}
    jobs = [
        JobRecord(
            job_id=f"swp-{i:04d}",
            sweep_id="swp",
            index=i,
            name=f"k{i}",
            state=S.QUEUED,
            attempt=1,
            spec={**spec, "overrides": {}},
            created_at=now,
            updated_at=now,
            pack_id="swp-p000",
        )
        for i in range(members)
    ]
    pack = jobs[0].model_copy(
        update={"job_id": "swp-p000", "pack_id": None, "members": [j.job_id for j in jobs]}
    )
    sweep = SweepRecord(
        sweep_id="swp",
        name="p",
        created_at=now,
        spec={},
        job_ids=[j.job_id for j in jobs],
        pack_ids=[pack.job_id],
    )
    world.store.create_sweep(sweep, jobs, [pack])
    world.store.start_first_attempt(pack.job_id)
    return pack.job_id, pack.members


def _segment(
    world: StageWorld,
    pack_id: str,
    instance: InstanceRecord,
    segment: int,
    outcomes: dict[str, dict],
    tmp_path: Path,
) -> None:
    """The pack's worker ran `segment`: each member with a checkpoint wrote it (and `final/`
    when done) in `run/<member>/`."""
    for member, outcome in outcomes.items():
        if outcome.get("checkpoint"):
            local = write_checkpoint(tmp_path / member, segment * 4, segment * 2048, b"s", "{}")
            outcome["checkpoint"] = f"{member}/checkpoints/{local.name}"
            world.remote_tree(instance, local, outcome["checkpoint"])
        if outcome.get("done"):
            final = tmp_path / member / "final"
            final.mkdir(parents=True, exist_ok=True)
            (final / "metrics.json").write_text(json.dumps({"evals": {"fvu": 0.25}}))
            world.remote_tree(instance, final, f"{member}/final")
    assert world.store.start_segment(pack_id, 1, segment)
    world.store.finish_segment(pack_id, 1, segment, "done", member_outcomes=outcomes)


def test_members_follow_the_pack_and_leave_it_alone(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    pack_id, (plain, failing, finished) = _pack(stage_world)
    instance = stage_world.launch(pack_id, S.TRAINING)
    stage_world.store.update_instance(instance.instance_id, members=[plain, failing, finished])
    instance = stage_world.store.instance(instance.instance_id)
    assert [stage_world.job(m).state for m in (plain, failing, finished)] == [S.TRAINING] * 3
    assert stage_world.attempt(plain).segment == 0  # the pack's segments are the pack's own

    assert stage_world.deliver(supervise_training, pack_id).state == "RETRY"
    outcomes = {
        plain: {"checkpoint": True, "done": False, "error": None},
        failing: {"checkpoint": "", "done": False, "error": "TrainingDiverged: loss is nan"},
        finished: {"checkpoint": True, "done": True, "error": None},
    }
    _segment(stage_world, pack_id, instance, 1, outcomes, tmp_path)
    assert stage_world.deliver(supervise_training, pack_id).state == "RETRY"

    assert stage_world.job(plain).state is S.TRAINING
    assert stage_world.job(plain).latest_checkpoint == "step-0000000004"
    assert stage_world.job(pack_id).latest_checkpoint == "step-0000000004"
    assert stage_world.job(failing).state is S.FAILED
    assert "TrainingDiverged" in (stage_world.job(failing).reason or "")
    done = stage_world.job(finished)
    assert done.state is S.SUCCEEDED and done.metrics == {"fvu": 0.25}
    assert set(stage_world.store.instance(instance.instance_id).member_left_at) == {
        failing,
        finished,
    }
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]

    # A preemption of the pack moves the member still in it, not those that left.
    stage_world.store.transition(pack_id, 1, S.PREEMPTED, reason="lost", preemptions=1)
    stage_world.store.begin_attempt(pack_id, 2)
    assert (stage_world.job(plain).state, stage_world.job(plain).attempt) == (S.PROVISIONING, 2)
    assert stage_world.job(plain).preemptions == 1
    assert (stage_world.job(finished).state, stage_world.job(finished).attempt) == (S.SUCCEEDED, 1)


def test_a_member_hands_the_chord_its_result_once_its_cost_is_final(
    stage_world: StageWorld,
) -> None:
    pack_id, (first, second) = _pack(stage_world, members=2)
    instance = stage_world.launch(pack_id, S.TRAINING, price_per_hour=3.6, launched_ago_s=100)
    stage_world.store.update_instance(
        instance.instance_id, members=[first, second], member_left_at={first: time.time() - 50}
    )
    for member in (first, second):  # as provision records a pack's instance
        stage_world.store.update_attempt(member, 1, instance_id=instance.instance_id)
    stage_world.store.transition(first, 1, S.FAILED, reason="own error")
    assert stage_world.deliver(follow_pack, first).state == "RETRY"  # its instance still runs

    stage_world.store.mark_instance_terminated(instance.instance_id)
    delivery = stage_world.deliver(follow_pack, first)
    assert delivery.state == "SUCCESS" and delivery.value["state"] == "FAILED"
    # 50 s shared by two, then 50 s by the one left: 25 s of 3.6 $/h for the first.
    assert delivery.value["cost_usd"] == pytest.approx(0.025, rel=0.05)
    assert stage_world.deliver(follow_pack, second).state == "RETRY"  # still training
