"""Stage `supervise_training`: the control-plane side of training.

It sends one `train_segment` at a time to the instance's queue, follows the attempt record, pulls
each segment's checkpoint off the instance before the segment counts, and re-schedules itself.
Because it runs on the control plane, the sweep chord's slot never depends on a task that could
be lost with its instance; on preemption it resumes by replacement (see jobs.stage_base).
"""

from __future__ import annotations

import logging
import posixpath
import time

from jobs.checkpoints import prune_pulled_checkpoints, verify_pulled_checkpoint
from jobs.errors import StageFailed
from jobs.instances import open_ssh
from jobs.remote import layout_for
from jobs.stage_base import StageContext, stage
from queue_app.celery_app import TRAIN_SEGMENT_TASK, app, segment_task_id
from queue_app.records import AttemptRecord, InstanceRecord
from queue_app.statemachine import JobState, SegmentStatus

log = logging.getLogger(__name__)

RESEND_AFTER_S = 60.0  # a segment still "sent" this long after sending lost its message
PULL_LEASE_S = 60.0  # renewed while a pull runs; lapses this soon after its holder is killed
STOP_STATES = {"cost_cap": JobState.COST_CAPPED, "cancel": JobState.CANCELLED}


@stage("supervise_training")
def supervise_training(ctx: StageContext) -> None:
    """Drive training segment by segment until the run is done, stopped or failed."""
    ctx.advance(JobState.TRAINING)
    instance = ctx.require_instance()
    record = ctx.attempt()
    status = record.segment_status
    if record.segment == 0:
        _send_segment(ctx, instance, 1)
    elif status is SegmentStatus.SENT and _since(record.segment_sent_at) > RESEND_AFTER_S:
        log.warning("segment %d was never picked up; sending it again", record.segment)
        _send_segment(ctx, instance, record.segment)
    elif status is SegmentStatus.FAILED:
        raise StageFailed(f"training segment {record.segment} failed: {record.segment_error}")
    elif status is SegmentStatus.DONE:
        if record.pulled_segment < record.segment:
            _pull_checkpoint(ctx, instance, record)
        if record.segment_done:
            return  # on to collect
        if record.segment_stopped:
            _stop(ctx)
            return
        _send_segment(ctx, instance, record.segment + 1)
    ctx.poll()


def _since(moment: float | None) -> float:
    """Seconds since `moment` (since the epoch when it is unset)."""
    return time.time() - (moment or 0)


def _send_segment(ctx: StageContext, instance: InstanceRecord, segment: int) -> None:
    job_id, attempt = ctx.ref.job_id, ctx.ref.attempt
    if not ctx.store.claim_segment(job_id, attempt, segment):
        return  # another supervisor copy sent it already
    app.send_task(
        TRAIN_SEGMENT_TASK,
        kwargs={
            "job_id": job_id,
            "attempt": attempt,
            "segment": segment,
            "instance_id": instance.instance_id,
        },
        task_id=segment_task_id(job_id, attempt, segment),
    )
    log.info("sent training segment %d to %s", segment, instance.instance_id)


def _pull_checkpoint(ctx: StageContext, instance: InstanceRecord, record: AttemptRecord) -> None:
    """Copy the segment's checkpoint into the artifact store and verify it there."""
    if not record.segment_checkpoint:
        raise StageFailed(f"segment {record.segment} finished without a checkpoint")
    with ctx.store.lease(f"pull:{ctx.ref.job_id}", PULL_LEASE_S, renew=True) as held:
        if not held:
            ctx.poll()  # another copy of this task is pulling
        name = posixpath.basename(record.segment_checkpoint.rstrip("/"))
        local = ctx.settings.checkpoints_dir(ctx.ref.sweep_id, ctx.ref.job_id) / name
        remote = posixpath.join(layout_for(instance).run_dir, record.segment_checkpoint)
        if not verify_pulled_checkpoint(local):
            with open_ssh(instance, ctx.settings) as ssh:
                ssh.get_dir(remote, local)
            if not verify_pulled_checkpoint(local):
                raise StageFailed(f"checkpoint {name} failed verification after the pull")
        ctx.store.update_job(ctx.ref.job_id, ctx.ref.attempt, latest_checkpoint=name)
        ctx.update_attempt(pulled_segment=record.segment)
        keep = ctx.config.train.keep_checkpoints
        prune_pulled_checkpoints(ctx.settings, ctx.ref.sweep_id, ctx.ref.job_id, keep)
        log.info("checkpoint %s of segment %d is in the store", name, record.segment)


def _stop(ctx: StageContext) -> None:
    """Training stopped on request after checkpointing: record why."""
    job = ctx.store.job(ctx.ref.job_id)
    target = STOP_STATES.get(job.stop_requested or "", JobState.CANCELLED)
    reason = f"stopped on request ({job.stop_requested or 'stop'}); last checkpoint kept"
    ctx.store.transition(ctx.ref.job_id, ctx.ref.attempt, target, reason=reason, allow_same=True)
