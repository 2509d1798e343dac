"""The hand-off of a noticed attempt's checkpoint (jobs.notice_handoff), stage by stage against
the fakes: on the notice `supervise_training` starts attempt 2 at once and leaves the noticed
instance running; the noticed segment may still end after attempt 2 began (the fence's one
exception, closed with the hand-off); `notice_handoff` pulls its checkpoint, closes the hand-off
and terminates the instance; attempt 2's bootstrap starts its worker (which loads the trainer),
waits for the hand-off (bounded) and resumes from the checkpoint written on notice, or from the
newest that verifies when it was lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.checkpoints import pulled_checkpoint_dir, store_pulled_checkpoint
from jobs.notice_handoff import HANDOFF_POLL_S, HANDOFF_WAIT_S, NOTICE_HANDOFF_TASK, hand_off
from jobs.providers.base import InstanceStatus
from jobs.remote import layout_for
from jobs.stages import bootstrap, supervise_training
from queue_app.celery_app import WARM_UP_TASK
from queue_app.errors import StaleAttempt
from queue_app.records import InstanceRecord
from queue_app.statemachine import HandoffStatus, JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld, ago

S = JobState
H = HandoffStatus
BROKER_PORT = 16379


def _noticed(world: StageWorld) -> tuple[str, InstanceRecord]:
    """Attempt 1 trains segment 1 when its instance gets an interruption notice (what
    jobs.notice_watch records)."""
    job_id = world.sweep()
    instance = world.launch(job_id, S.TRAINING)
    world.deliver(supervise_training, job_id)  # sends segment 1
    assert world.store.start_segment(job_id, 1, 1, runner="test")
    world.store.transition(job_id, 1, S.PREEMPTING, reason="interruption notice")
    return job_id, instance


def _checkpoint(world: StageWorld, instance: InstanceRecord, tmp_path: Path, step: int) -> str:
    """A checkpoint at `step` on the instance, as the trainer writes it; its relative path."""
    local = write_checkpoint(tmp_path / "written", step, step * 512, b"state", "{}")
    world.remote_tree(instance, local, f"checkpoints/{local.name}")
    return f"checkpoints/{local.name}"


def _segment_ends(world: StageWorld, job_id: str, instance: InstanceRecord, tmp_path: Path) -> str:
    """The noticed segment stops at step 7 with its checkpoint; the checkpoint's name."""
    written = _checkpoint(world, instance, tmp_path, 7)
    assert world.store.finish_segment(
        job_id, 1, 1, "done", segment_checkpoint=written, segment_stopped=True
    )
    return Path(written).name


def _attempt_2_bootstrapping(world: StageWorld, job_id: str) -> InstanceRecord:
    """Attempt 2 was provisioned, booted and verified; its tunnel is up."""
    instance = world.launch(job_id, S.BOOTSTRAPPING)
    world.store.update_instance(instance.instance_id, broker_port=BROKER_PORT)
    return world.instance(instance.instance_id)


def _bootstrapped(world: StageWorld, job_id: str) -> None:
    """Attempt 2's bootstrap starts its worker, which answers, and goes on to training."""
    new = _attempt_2_bootstrapping(world, job_id)
    assert world.deliver(bootstrap, job_id).state == "RETRY"  # the worker starts
    world.worker_answers(job_id, new)
    assert world.deliver(bootstrap, job_id) == world.passed_on(job_id)


def _look_again(world: StageWorld) -> float:
    """Seconds until either side looks at an open hand-off again."""
    return min(world.settings.poll_interval_s, HANDOFF_POLL_S)


def _status(world: StageWorld, instance: InstanceRecord) -> InstanceStatus:
    return world.provider.instances[instance.instance_id].status


def test_the_next_attempt_starts_at_the_notice_and_the_noticed_instance_keeps_running(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _noticed(stage_world)
    resumed = stage_world.deliver(supervise_training, job_id)
    assert resumed.state == "IGNORED" and resumed.replacement is not None
    first = resumed.replacement.tasks[0]
    assert first.args[0]["attempt"] == 2 and not first.options.get("countdown")
    job = stage_world.job(job_id)
    assert (job.state, job.preemptions) == (S.PREEMPTED, 1)
    assert stage_world.attempt(job_id).handoff is H.OPEN
    assert _status(stage_world, instance) is InstanceStatus.ACTIVE
    [owner] = [m for m in stage_world.sent if m["name"] == NOTICE_HANDOFF_TASK]
    assert owner["kwargs"] == {"job_id": job_id, "attempt": 1}


def test_the_noticed_segment_ends_after_the_next_attempt_began_and_is_handed_off(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, instance = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.store.begin_attempt(job_id, 2)  # attempt 2's provision ran
    settings = stage_world.settings
    assert hand_off(stage_world.store, settings, job_id, 1) == _look_again(stage_world)
    # Attempt 1 is stale: its job record is fenced, its own attempt record writable while open.
    with pytest.raises(StaleAttempt):
        stage_world.store.update_job(job_id, 1, progress={"step": 8})
    name = _segment_ends(stage_world, job_id, instance, tmp_path)

    assert hand_off(stage_world.store, settings, job_id, 1) is None
    record = stage_world.attempt(job_id)
    assert (record.handoff, record.handoff_checkpoint, record.pulled_segment) == (H.KEPT, name, 1)
    assert (settings.checkpoints_dir("sw1", job_id) / name / "state.pt").exists()
    assert _status(stage_world, instance) is InstanceStatus.TERMINATED
    with pytest.raises(StaleAttempt):  # closed: the fence holds again
        stage_world.store.update_attempt(job_id, 1, segment_error="late")
    assert hand_off(stage_world.store, settings, job_id, 1) is None  # a redelivered copy


def test_bootstrap_starts_the_worker_then_waits_for_the_hand_off_and_resumes_from_it(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, old = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    new = _attempt_2_bootstrapping(stage_world, job_id)
    layout = layout_for(new)
    starting = stage_world.deliver(bootstrap, job_id)
    assert starting.state == "RETRY"  # the worker starts (and warms up) while the pull goes on
    assert layout.start_script in stage_world.ssh.files[new.instance_id]
    [warm] = [m for m in stage_world.sent if m["name"] == WARM_UP_TASK]
    assert warm["kwargs"] == {"job_id": job_id, "attempt": 2, "instance_id": new.instance_id}
    stage_world.worker_answers(job_id, new)
    waiting = stage_world.deliver(bootstrap, job_id)
    assert (waiting.state, waiting.countdown) == ("RETRY", _look_again(stage_world))
    assert layout.restore_plan not in stage_world.ssh.files[new.instance_id]  # no checkpoint yet

    name = _segment_ends(stage_world, job_id, old, tmp_path)
    assert hand_off(stage_world.store, stage_world.settings, job_id, 1) is None
    assert stage_world.deliver(bootstrap, job_id) == stage_world.passed_on(job_id)
    assert stage_world.attempt(job_id, 2).resume_from == name
    assert stage_world.job(job_id).latest_checkpoint == name
    # the new instance downloads it from the store itself, by the restore plan it was given
    plan = stage_world.ssh.files[new.instance_id][layout.restore_plan]
    assert json.loads(plan)["name"] == name


def _stored(world: StageWorld, job_id: str, step: int) -> str:
    """An earlier segment's checkpoint at `step`, already home and verified; its name."""
    root = pulled_checkpoint_dir(world.settings, "sw1", job_id, "any").parent
    name = write_checkpoint(root, step, step * 512, b"state", "{}").name
    assert store_pulled_checkpoint(world.settings, "sw1", job_id, name)
    return name


def test_a_checkpoint_that_does_not_verify_is_not_handed_off(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, old = _noticed(stage_world)
    older = _stored(stage_world, job_id, 3)
    stage_world.deliver(supervise_training, job_id)
    name = _segment_ends(stage_world, job_id, old, tmp_path)
    files = stage_world.ssh.files[old.instance_id]
    [state] = [path for path in files if path.endswith(f"{name}/state.pt")]
    files[state] = b"bit rot"
    assert hand_off(stage_world.store, stage_world.settings, job_id, 1) is None
    record = stage_world.attempt(job_id)
    assert record.handoff is H.LOST and "failed verification" in (record.handoff_note or "")
    assert _status(stage_world, old) is InstanceStatus.TERMINATED
    _bootstrapped(stage_world, job_id)
    assert stage_world.attempt(job_id, 2).resume_from == older


def test_an_instance_lost_before_its_segment_ended_closes_the_hand_off_at_once(
    stage_world: StageWorld,
) -> None:
    job_id, old = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.provider.set_status(old.instance_id, InstanceStatus.PREEMPTED)
    assert hand_off(stage_world.store, stage_world.settings, job_id, 1) is None
    record = stage_world.attempt(job_id)
    assert record.handoff is H.LOST and "preempted" in (record.handoff_note or "")
    _bootstrapped(stage_world, job_id)  # on, without waiting


def test_bootstrap_stops_waiting_after_the_bound_and_the_fence_closes(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, old = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.store.update_attempt(job_id, 1, handoff_opened_at=ago(HANDOFF_WAIT_S + 1))
    _bootstrapped(stage_world, job_id)
    record = stage_world.attempt(job_id)
    assert record.handoff is H.LOST and "within" in (record.handoff_note or "")
    assert stage_world.attempt(job_id, 2).resume_from is None  # nothing verified was home
    written = _checkpoint(stage_world, old, tmp_path, 7)
    with pytest.raises(StaleAttempt):  # the noticed segment ends too late to count
        stage_world.store.finish_segment(job_id, 1, 1, "done", segment_checkpoint=written)
    assert hand_off(stage_world.store, stage_world.settings, job_id, 1) is None
    assert _status(stage_world, old) is InstanceStatus.TERMINATED


def test_redelivered_supervisors_neither_terminate_the_noticed_instance_nor_resume_twice(
    stage_world: StageWorld,
) -> None:
    job_id, old = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    # A copy delivered before attempt 2's provision ran resumes again (the same replacement
    # chain) and leaves the noticed instance to its hand-off.
    again = stage_world.deliver(supervise_training, job_id)
    assert again.replacement is not None and again.replacement.tasks[0].args[0]["attempt"] == 2
    assert _status(stage_world, old) is InstanceStatus.ACTIVE
    assert stage_world.job(job_id).preemptions == 1
    stage_world.store.begin_attempt(job_id, 2)
    late = stage_world.deliver(supervise_training, job_id, attempt=1)
    assert (late.state, late.replacement) == ("IGNORED", None)
    assert stage_world.attempt(job_id).handoff is H.OPEN
    assert _status(stage_world, old) is InstanceStatus.ACTIVE


def test_a_noticed_pack_hands_off_each_members_checkpoint_and_one_that_is_corrupt_falls_back(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    pack_id, (kept, corrupt) = stage_world.pack(members=2)
    older = _stored(stage_world, corrupt, 3)
    instance = stage_world.launch(pack_id, S.TRAINING)
    stage_world.deliver(supervise_training, pack_id)  # sends segment 1
    assert stage_world.store.start_segment(pack_id, 1, 1, runner="test")
    stage_world.store.transition(pack_id, 1, S.PREEMPTING, reason="interruption notice")
    stage_world.deliver(supervise_training, pack_id)  # attempt 2 starts at the notice
    stage_world.store.begin_attempt(pack_id, 2)
    outcomes = {}
    for member in (kept, corrupt):  # the pack stops at one stream position
        local = write_checkpoint(tmp_path / member, 7, 3584, member.encode(), "{}")
        outcomes[member] = {"checkpoint": f"{member}/checkpoints/{local.name}"}
        stage_world.remote_tree(instance, local, outcomes[member]["checkpoint"])
    state = f"{layout_for(instance).run_dir}/{outcomes[corrupt]['checkpoint']}/state.pt"
    stage_world.ssh.files[instance.instance_id][state] = b"torn"
    stage_world.store.finish_segment(
        pack_id, 1, 1, "done", member_outcomes=outcomes, segment_stopped=True
    )

    assert hand_off(stage_world.store, stage_world.settings, pack_id, 1) is None

    record = stage_world.attempt(pack_id)
    assert (record.handoff, record.handoff_checkpoint) == (H.KEPT, "step-0000000007")
    new = _attempt_2_bootstrapping(stage_world, pack_id)
    assert stage_world.deliver(bootstrap, pack_id).state == "RETRY"  # uploaded; worker starting
    stage_world.worker_answers(pack_id, new)
    assert stage_world.deliver(bootstrap, pack_id) == stage_world.passed_on(pack_id)
    files = stage_world.ssh.files[new.instance_id]
    plans = {m: json.loads(files[layout_for(new).member_restore_plan(m)]) for m in outcomes}
    assert {m: plan["name"] for m, plan in plans.items()} == {
        kept: "step-0000000007",
        corrupt: older,
    }
    assert stage_world.job(kept).latest_checkpoint == "step-0000000007"
    assert _status(stage_world, instance) is InstanceStatus.TERMINATED


def test_an_attempt_preempted_before_it_trained_passes_the_wait_on_to_the_next(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, old = _noticed(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.launch(job_id, S.VERIFYING)  # attempt 2, lost before its bootstrap
    stage_world.store.transition(job_id, 2, S.PREEMPTED, reason="lost while verifying")
    third = stage_world.launch(job_id, S.BOOTSTRAPPING)
    stage_world.store.update_instance(third.instance_id, broker_port=BROKER_PORT)
    assert stage_world.deliver(bootstrap, job_id).state == "RETRY"  # the worker starts
    stage_world.worker_answers(job_id, third)
    waiting = stage_world.deliver(bootstrap, job_id)
    assert (waiting.state, waiting.countdown) == ("RETRY", _look_again(stage_world))

    name = _segment_ends(stage_world, job_id, old, tmp_path)
    assert hand_off(stage_world.store, stage_world.settings, job_id, 1) is None
    assert stage_world.deliver(bootstrap, job_id) == stage_world.passed_on(job_id)
    assert stage_world.attempt(job_id, 3).resume_from == name
