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

from jobs.objectstore import describe_folder
from jobs.stages import follow_pack, supervise_training
from jobs.upload_board import UploadBoard, UploadRequest
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld
from tests.support.instance_uploads import InstanceUpload, start_upload

S = JobState


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
    assert world.store.start_segment(pack_id, 1, segment, runner="test")
    world.store.finish_segment(pack_id, 1, segment, "done", member_outcomes=outcomes)


def test_members_follow_the_pack_and_leave_it_alone(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    pack_id, (plain, failing, finished) = stage_world.pack()
    instance = stage_world.launch(pack_id, S.TRAINING, provider="lambda")  # pulled over SFTP
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


def _upload(
    world: StageWorld, members: list[str], segment: int, tmp_path: Path, fail: str = ""
) -> list[InstanceUpload]:
    """The instance uploads each member's checkpoint of `segment` in the background, each on
    the member's own board; `fail`'s upload gives up."""
    uploads = []
    for member in members:
        folder = tmp_path / member / f"step-{segment * 4:010d}"
        if member == fail:
            board = UploadBoard(world.store.r, member, 1)
            board.request(
                segment, UploadRequest(name=folder.name, manifest=describe_folder(folder))
            )
            board.fail(segment, "OSError: no space left on device")
        else:
            uploads.append(start_upload(world.store, member, segment, folder))
    return uploads


def _serve(world: StageWorld, pack_id: str, uploads: list[InstanceUpload]) -> None:
    """Deliver supervise (which serves the members' boards) until every upload has ended."""
    for _ in range(2000):
        world.deliver(supervise_training, pack_id)
        if not any(upload.running for upload in uploads):
            break
    world.deliver(supervise_training, pack_id)
    assert not any(upload.error for upload in uploads)


def test_members_upload_in_the_background_and_one_that_is_not_kept_fails_alone(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    pack_id, (plain, finished, unlucky) = stage_world.pack()
    instance = stage_world.launch(pack_id, S.TRAINING)  # local: uploads to the store itself
    stage_world.deliver(supervise_training, pack_id)
    outcomes = {
        m: {"checkpoint": True, "done": False, "error": None} for m in (plain, finished, unlucky)
    }
    _segment(stage_world, pack_id, instance, 1, outcomes, tmp_path)

    # Nobody leaves: the next segment trains while the checkpoints upload (the GPU waits not).
    assert stage_world.deliver(supervise_training, pack_id).state == "RETRY"
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]
    _serve(stage_world, pack_id, _upload(stage_world, [plain, finished, unlucky], 1, tmp_path))
    for member in (plain, finished, unlucky):  # each in its own place, one upload each
        assert stage_world.job(member).latest_checkpoint == "step-0000000004"
        assert stage_world.attempt(member).pulled_segment == 1

    # A member finishes: this segment's checkpoints are waited for; the one not kept fails alone.
    outcomes = {
        plain: {"checkpoint": True, "done": False, "error": None},
        finished: {"checkpoint": True, "done": True, "error": None},
        unlucky: {"checkpoint": True, "done": False, "error": None},
    }
    _segment(stage_world, pack_id, instance, 2, outcomes, tmp_path)
    assert stage_world.deliver(supervise_training, pack_id).state == "RETRY"
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]  # waits for the uploads
    _serve(
        stage_world, pack_id, _upload(stage_world, [plain, finished, unlucky], 2, tmp_path, unlucky)
    )

    assert stage_world.job(plain).state is S.TRAINING
    assert stage_world.job(plain).latest_checkpoint == "step-0000000008"
    assert stage_world.job(finished).state is S.SUCCEEDED
    assert stage_world.job(finished).latest_checkpoint == "step-0000000008"
    lost = stage_world.job(unlucky)
    assert lost.state is S.FAILED and "upload: failed" in (lost.reason or "")
    assert lost.latest_checkpoint == "step-0000000004"  # the one before stays its latest
    assert stage_world.attempt(pack_id).pulled_segment == 2
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2, 3]


def test_a_member_stopped_for_its_cost_cap_leaves_with_its_checkpoint_kept(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    pack_id, (capped, plain) = stage_world.pack(members=2)
    instance = stage_world.launch(pack_id, S.TRAINING, provider="lambda")  # pulled over SFTP
    stage_world.store.update_instance(instance.instance_id, members=[capped, plain])
    instance = stage_world.store.instance(instance.instance_id)
    stage_world.deliver(supervise_training, pack_id)
    stage_world.store.update_job(capped, 1, stop_requested="cost_cap")  # by the watchdog
    outcomes = {m: {"checkpoint": True, "done": False, "error": None} for m in (capped, plain)}
    _segment(stage_world, pack_id, instance, 1, outcomes, tmp_path)

    assert stage_world.deliver(supervise_training, pack_id).state == "RETRY"

    member = stage_world.job(capped)
    assert member.state is S.COST_CAPPED
    assert member.reason == "stopped on request (cost_cap); last checkpoint kept: step-0000000004"
    assert stage_world.job(plain).state is S.TRAINING
    assert list(stage_world.store.instance(instance.instance_id).member_left_at) == [capped]
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]  # the pack trains on


def test_a_member_hands_the_chord_its_result_once_its_cost_is_final(
    stage_world: StageWorld,
) -> None:
    pack_id, (first, second) = stage_world.pack(members=2)
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
