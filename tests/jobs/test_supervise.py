"""Stage `supervise_training` against fake SSH, for a cloud instance with the file store (it
cannot reach the store, so checkpoints come over SFTP): one segment at a time, each segment's
checkpoint pulled and verified before the next is sent; a lost connection during a pull is
retried; a failed segment or a corrupt checkpoint fails the job and terminates the instance;
duplicate supervisors send each segment once."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.stage_base import backoff
from jobs.stages import supervise_training
from jobs.supervise import RESEND_AFTER_S
from queue_app.celery_app import TRAIN_SEGMENT_TASK
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState
from sae.checkpoint import checkpoint_name, write_checkpoint
from tests.jobs.stage_world import StageWorld, ago

S = JobState


def _segment_done(
    world: StageWorld,
    job_id: str,
    instance: InstanceRecord,
    segment: int,
    tmp_path: Path,
    done: bool = False,
) -> str:
    """The GPU-side worker ran `segment` and wrote its checkpoint on the instance."""
    local = write_checkpoint(tmp_path / "written", segment * 4, segment * 2048, b"state", "{}")
    relative = f"checkpoints/{local.name}"
    world.remote_tree(instance, local, relative)
    assert world.store.start_segment(job_id, 1, segment, runner="test")
    world.store.finish_segment(
        job_id, 1, segment, "done", segment_checkpoint=relative, segment_done=done
    )
    return local.name


def _training(world: StageWorld) -> tuple[str, InstanceRecord]:
    job_id = world.sweep()
    return job_id, world.launch(job_id, S.TRAINING, provider="lambda")


def test_segments_are_sent_one_at_a_time_and_each_checkpoint_is_pulled(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, instance = _training(stage_world)
    first = stage_world.deliver(supervise_training, job_id)
    assert (first.state, first.countdown) == ("RETRY", stage_world.settings.poll_interval_s)
    assert stage_world.sent == [
        {
            "name": TRAIN_SEGMENT_TASK,
            "kwargs": {
                "job_id": job_id,
                "attempt": 1,
                "segment": 1,
                "instance_id": instance.instance_id,
            },
            "task_id": f"seg-{job_id}-a1-1",
        }
    ]

    name = _segment_done(stage_world, job_id, instance, 1, tmp_path)
    assert stage_world.deliver(supervise_training, job_id).state == "RETRY"
    assert stage_world.job(job_id).latest_checkpoint == name
    assert (stage_world.settings.checkpoints_dir("sw1", job_id) / name / "state.pt").exists()
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]

    last = _segment_done(stage_world, job_id, instance, 2, tmp_path, done=True)
    delivery = stage_world.deliver(supervise_training, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.job(job_id).latest_checkpoint == last
    assert stage_world.attempt(job_id).pulled_segment == 2
    assert len(stage_world.sent) == 2


def test_a_connection_lost_during_a_pull_is_retried(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, instance = _training(stage_world)
    stage_world.deliver(supervise_training, job_id)
    name = _segment_done(stage_world, job_id, instance, 1, tmp_path)
    stage_world.ssh.down.add(instance.instance_id)
    delivery = stage_world.deliver(supervise_training, job_id)
    assert (delivery.state, delivery.countdown) == ("RETRY", backoff(1))
    assert stage_world.job(job_id).latest_checkpoint is None
    assert len(stage_world.sent) == 1

    stage_world.ssh.down.clear()
    assert stage_world.deliver(supervise_training, job_id).state == "RETRY"
    assert stage_world.job(job_id).latest_checkpoint == name


def test_a_failed_segment_fails_the_job_and_terminates_the_instance(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _training(stage_world)
    stage_world.deliver(supervise_training, job_id)
    assert stage_world.store.start_segment(job_id, 1, 1, runner="test")
    stage_world.store.finish_segment(job_id, 1, 1, "failed", segment_error="RuntimeError: nan")
    delivery = stage_world.deliver(supervise_training, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.failure(job_id, instance) == (
        "supervise_training: training segment 1 failed: RuntimeError: nan"
    )


def test_a_checkpoint_that_does_not_verify_fails_the_job(
    stage_world: StageWorld, tmp_path: Path
) -> None:
    job_id, instance = _training(stage_world)
    stage_world.deliver(supervise_training, job_id)
    name = _segment_done(stage_world, job_id, instance, 1, tmp_path)
    files = stage_world.ssh.files[instance.instance_id]
    [state] = [path for path in files if path.endswith(f"{name}/state.pt")]
    files[state] = b"bit rot"
    assert stage_world.deliver(supervise_training, job_id).state == "SUCCESS"
    assert "failed verification" in stage_world.failure(job_id, instance)
    assert len(stage_world.sent) == 1


def test_duplicate_supervisors_send_a_segment_once_and_resend_a_lost_one(
    stage_world: StageWorld,
) -> None:
    job_id, _ = _training(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.deliver(supervise_training, job_id)
    assert len(stage_world.sent) == 1

    first_sent = ago(RESEND_AFTER_S + 1)
    stage_world.store.update_attempt(job_id, 1, segment_sent_at=first_sent)
    stage_world.deliver(supervise_training, job_id)
    assert [m["task_id"] for m in stage_world.sent] == [f"seg-{job_id}-a1-1"] * 2
    stage_world.deliver(supervise_training, job_id)  # the resend's own clock starts now
    assert len(stage_world.sent) == 2
    # A resend is no sign of work: the watchdog's stuck check still counts from the first send.
    record = stage_world.store.attempt(job_id, 1)
    assert record.segment_sent_at == pytest.approx(first_sent)
    assert record.segment_resent_at is not None and record.segment_resent_at > first_sent


@pytest.mark.parametrize(("stop", "state"), [("cost_cap", S.COST_CAPPED), ("cancel", S.CANCELLED)])
def test_a_segment_stopped_on_request_ends_the_job_with_its_checkpoint(
    stage_world: StageWorld, tmp_path: Path, stop: str, state: JobState
) -> None:
    job_id, instance = _training(stage_world)
    stage_world.deliver(supervise_training, job_id)
    stage_world.store.update_job(job_id, 1, stop_requested=stop)
    name = _segment_done(stage_world, job_id, instance, 1, tmp_path)
    stage_world.store.update_attempt(job_id, 1, segment_stopped=True)
    assert stage_world.deliver(supervise_training, job_id).state == "SUCCESS"
    job = stage_world.job(job_id)
    assert (job.state, job.latest_checkpoint) == (state, name)
    assert checkpoint_name(4) == name
