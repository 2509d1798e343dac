"""The drain step of a tick: while the queue is drained, training checkpoints at its next step
and each job is paused (instance terminated) once its checkpoint is kept; jobs that trained
nothing yet are paused at once; collected jobs lose their instance; nothing else is touched."""

from __future__ import annotations

import time
from pathlib import Path

from jobs.objectstore import checkpoints_prefix, describe_folder, open_store, verify_folder
from jobs.providers import InstanceStatus
from jobs.upload_board import UploadBoard, UploadRequest
from queue_app.admission import PAUSE_REQUEST, set_drained
from queue_app.keys import instance_key
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.support.instance_uploads import WAIT_S, start_upload
from tests.watchdog.conftest import World
from watchdog.tick import run_tick


def drained(world: World, by: str = "drain") -> None:
    set_drained(world.store.r, by, {}, keep=["watchdog"])


def test_nothing_happens_unless_drained(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id)
    world.training(job_id, status="done")

    report = run_tick(world.context())

    assert [a for a in report.actions if a.check == "drain"] == []
    assert world.store.job(job_id).stop_requested is None


def test_training_is_asked_to_stop_then_paused_once_its_checkpoint_is_kept(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.store.r.hdel(instance_key(instance.instance_id), "host")  # no SSH for its worker log
    world.training(job_id, segment=2, status="running")
    world.store.update_job(job_id, 1, latest_checkpoint="step-0000000040")
    drained(world)

    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.TRAINING and job.stop_requested == PAUSE_REQUEST
    assert world.store.instance(instance.instance_id).terminate_requested_at is None

    world.store.update_attempt(job_id, 1, segment_status="done", pulled_segment=2)
    report = run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.PAUSED and job.preemptions == 0
    assert "step-0000000040" in (job.reason or "") and "--undo" in (job.reason or "")
    assert world.provider.instances[instance.instance_id].status.gone
    assert ("drain", "paused", job_id) in [(a.check, a.kind, a.target) for a in report.actions]
    assert [e.detail for e in report.errors] == [
        f"worker log not kept: instance {instance.instance_id} has no SSH address yet"
    ]
    assert world.store.attempt(job_id, 1).ended_at is not None


def test_a_job_that_trained_nothing_yet_is_paused_at_once(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id, JobState.BOOTSTRAPPING)
    drained(world)

    run_tick(world.context())

    assert world.store.job(job_id).state is JobState.PAUSED
    assert world.provider.instances[instance.instance_id].status is InstanceStatus.TERMINATED


def test_a_collected_job_loses_its_instance_and_stays_terminating(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id, JobState.COLLECTING)
    world.store.transition(job_id, 1, JobState.TERMINATING)
    drained(world)

    run_tick(world.context())

    assert world.store.job(job_id).state is JobState.TERMINATING
    assert world.store.instance(instance.instance_id).terminate_requested_at is not None


def test_a_cost_cap_in_progress_is_left_to_the_cost_check(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id)
    world.training(job_id, status="done")
    world.store.update_job(job_id, 1, stop_requested="cost_cap")
    world.store.update_attempt(job_id, 1, pulled_segment=1)
    drained(world)

    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.TRAINING and job.stop_requested == "cost_cap"


def test_teardown_ends_the_jobs_itself(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id, JobState.BOOTING)
    drained(world, by="teardown")

    run_tick(world.context())

    assert world.store.job(job_id).state is JobState.BOOTING


def test_a_pack_pauses_once_every_members_checkpoint_is_kept(world: World, tmp_path: Path) -> None:
    pack_id, members = world.pack(members=3)
    kept, lost = members[:2], members[2]
    instance = world.launch(pack_id)
    world.store.r.hdel(instance_key(instance.instance_id), "host")  # no SSH for its worker log
    world.training(pack_id, status="running")
    drained(world)

    run_tick(world.context())
    assert world.store.job(pack_id).stop_requested == PAUSE_REQUEST

    # The segment stops at one stream position; the instance uploads each member's checkpoint
    # on the member's own board, and one member's upload gives up.
    folders = {m: write_checkpoint(tmp_path / m, 40, 4096, m.encode(), "{}") for m in members}
    outcomes = {m: {"checkpoint": f"{m}/checkpoints/{folders[m].name}"} for m in members}
    world.store.update_attempt(pack_id, 1, segment_status="done", member_outcomes=outcomes)
    board = UploadBoard(world.store.r, lost, 1)
    board.request(
        1, UploadRequest(name=folders[lost].name, manifest=describe_folder(folders[lost]))
    )
    board.fail(1, "OSError: no space left on device")
    uploads = [start_upload(world.store, m, 1, folders[m]) for m in kept]
    deadline = time.monotonic() + WAIT_S
    report = run_tick(world.context())
    while world.store.job(pack_id).state is JobState.TRAINING:  # each tick serves the boards
        assert time.monotonic() < deadline, "the pack was never paused"
        report = run_tick(world.context())
    assert not any(upload.error for upload in uploads)

    assert world.store.job(pack_id).state is JobState.PAUSED
    assert world.provider.instances[instance.instance_id].status.gone
    for member in kept:
        job = world.store.job(member)
        assert (job.state, job.latest_checkpoint) == (JobState.PAUSED, "step-0000000040")
        assert verify_folder(
            open_store(world.settings), f"{checkpoints_prefix('sw1', member)}/step-0000000040"
        )
    assert world.store.job(lost).state is JobState.PAUSED  # resumes from the one before
    assert world.store.job(lost).latest_checkpoint is None
    assert [(e.target, "is lost" in e.detail) for e in report.errors if e.target == lost] == [
        (lost, True)
    ]
