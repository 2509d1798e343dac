"""Stage `supervise_training`: the control-plane side of training.

It sends one `train_segment` at a time to the instance's queue, follows the attempt record, and
re-schedules itself. An instance that reaches the store uploads each checkpoint in the background
while the next segment trains: every run serves its upload board (jobs.upload_grants), and only
the last checkpoint (the run done or stopped) is waited for. Otherwise each segment's checkpoint
is pulled off the instance over SFTP before the next segment starts.
Because it runs on the control plane, the sweep chord's slot never depends on a task that could
be lost with its instance; on preemption it resumes by replacement (see jobs.stage_base).
After an interruption notice (PREEMPTING, see jobs.notice_watch) it starts the next attempt at
once and hands the noticed segment's checkpoint off to it (jobs.notice_handoff), while the
noticed instance still runs. A pack job (jobs.pack_stages) keeps every member's checkpoint the
same way (each member's upload on its own board; waited for when the pack's run ends or a
member leaves it) and settles the members that finished, failed or were stopped after each
segment.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

from jobs.checkpoint_pull import (
    CheckpointNotKept,
    pull_segment_checkpoint,
    serve_checkpoint_uploads,
)
from jobs.errors import OutOfGPUMemory, StageFailed
from jobs.notice_handoff import hand_off_on_notice
from jobs.pack_checkpoints import members_leave, serve_member_uploads
from jobs.pack_stages import pull_pack_checkpoints, settle_members
from jobs.stage_base import StageContext, stage
from jobs.upload_grants import instance_uploads
from queue_app.admission import drain_state
from queue_app.celery_app import TRAIN_SEGMENT_TASK, app, segment_task_id
from queue_app.errors import IllegalTransition
from queue_app.records import AttemptRecord, InstanceRecord
from queue_app.statemachine import JobState, SegmentStatus

log = logging.getLogger(__name__)

RESEND_AFTER_S = 60.0  # a segment still "sent" this long after sending lost its message
STOP_STATES = {"cost_cap": JobState.COST_CAPPED, "cancel": JobState.CANCELLED}


@stage("supervise_training")
def supervise_training(ctx: StageContext) -> dict[str, Any] | None:
    """Drive training segment by segment until the run is done, stopped or failed. While the
    queue is drained, or the job is asked to pause, no new segment starts: the watchdog's drain
    step pauses the job (watchdog.drain)."""
    try:
        ctx.advance(JobState.TRAINING)
    except IllegalTransition:
        if ctx.store.job(ctx.ref.job_id).state is not JobState.PREEMPTING:
            raise
        return hand_off_on_notice(ctx)
    instance = ctx.require_instance()
    if instance_uploads(instance, ctx.settings):  # it uploads while the next segment trains
        _serve_uploads(ctx)
    record = ctx.attempt()
    status = record.segment_status
    if record.segment == 0:
        _send_unless_held(ctx, instance, 1)
    elif status is SegmentStatus.SENT and _since(_last_sent(record)) > RESEND_AFTER_S:
        log.warning("segment %d was never picked up; sending it again", record.segment)
        _send_segment(ctx, instance, record.segment)
    elif status is SegmentStatus.FAILED:
        _segment_failed(record)
    elif status is SegmentStatus.DONE and _segment_ended(ctx, instance, record):
        return None  # on to collect
    ctx.poll()


def _segment_ended(ctx: StageContext, instance: InstanceRecord, record: AttemptRecord) -> bool:
    """After a segment: keep its checkpoint (at once, or waited for only when it is the last:
    the instance uploads in the background), settle a pack's members, then stop or send the
    next segment; True when training is over."""
    stop = ctx.store.job(ctx.ref.job_id).stop_requested or ""
    last = record.segment_done or stop in STOP_STATES
    if ctx.job.members:  # a member that leaves keeps this segment's checkpoint
        last = last or members_leave(ctx.store, record)
    background = instance_uploads(instance, ctx.settings)
    if record.pulled_segment < record.segment and (last or not background):
        _pull_checkpoint(ctx, instance, record)
    if ctx.job.members:
        if settle_members(ctx, instance, record):
            return True  # every member of the pack has left it
    elif record.segment_done:
        return True
    if stop in STOP_STATES:
        _stop(ctx, stop)
        return True
    _send_unless_held(ctx, instance, record.segment + 1)
    return False


def _segment_failed(record: AttemptRecord) -> NoReturn:
    """The failed segment's error: out of memory at the smallest micro-batch moves the job to a
    larger GPU type (jobs.oom); anything else fails it."""
    if record.segment_out_of_memory:
        raise OutOfGPUMemory(f"training segment {record.segment}: {record.segment_error}")
    raise StageFailed(f"training segment {record.segment} failed: {record.segment_error}")


def _last_sent(record: AttemptRecord) -> float | None:
    return record.segment_resent_at or record.segment_sent_at


def _since(moment: float | None) -> float:
    """Seconds since `moment` (since the epoch when it is unset)."""
    return time.time() - (moment or 0)


def _serve_uploads(ctx: StageContext) -> None:
    """Move on the attempt's checkpoint uploads (a pack's: each member's own board)."""
    if ctx.job.members:
        serve_member_uploads(ctx.store, ctx.settings, ctx.job, ctx.ref.attempt)
    else:
        serve_checkpoint_uploads(ctx.store, ctx.settings, ctx.job, ctx.ref.attempt)


def _send_unless_held(ctx: StageContext, instance: InstanceRecord, segment: int) -> None:
    """Send `segment` unless the queue is drained or the job is asked to pause."""
    if drain_state(ctx.store.r) is None and not ctx.store.job(ctx.ref.job_id).stop_requested:
        _send_segment(ctx, instance, segment)


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
    """Get the segment's checkpoint (a pack's: every member's) kept in the store (uploaded or
    pulled), or poll again."""
    try:
        if ctx.job.members:
            pulled = pull_pack_checkpoints(ctx, instance, record)
        else:
            pulled = pull_segment_checkpoint(ctx.store, ctx.settings, ctx.job, instance, record)
    except CheckpointNotKept as exc:
        raise StageFailed(str(exc)) from None
    if not pulled:
        ctx.poll()  # its upload goes on, or another process is pulling it


def _stop(ctx: StageContext, stop: str) -> None:
    """Training stopped on request after its checkpoint was pulled: record why."""
    kept = ctx.store.job(ctx.ref.job_id).latest_checkpoint
    reason = f"stopped on request ({stop}); last checkpoint kept: {kept or 'none was taken'}"
    target = STOP_STATES[stop]
    ctx.store.transition(ctx.ref.job_id, ctx.ref.attempt, target, reason=reason, allow_same=True)
