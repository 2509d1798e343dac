"""The hand-off of a noticed attempt's checkpoint to the next attempt, which starts at the
interruption notice so that its instance boots while the noticed one still runs.

On a notice (job PREEMPTING, jobs.notice_watch) `supervise_training` calls
`hand_off_on_notice`: it opens the attempt's hand-off (`AttemptRecord.handoff`), sends the
`notice_handoff` task, and resumes as attempt+1 at once (PREEMPTED, then the replacement chain
from provision), leaving the noticed instance running. From then on:

- `notice_handoff` owns the noticed attempt: it waits for the noticed segment to end, pulls
  its checkpoint into the store (a pack's: every member's, each into its own place), closes
  the hand-off KEPT (or LOST: no checkpoint, one that does not verify, an instance the
  provider lost, or HANDOFF_WAIT_S gone by) and terminates the noticed instance. It runs on
  the watchdog's queue, which stays consumed through a drain.
- While the hand-off is open the noticed attempt, stale as it is, may still write its own
  attempt record (the segment's end on the instance, the pull's record): the one exception to
  the attempt fence (queue_app.statemachine.HandoffStatus). The job's record stays fenced.
- Attempt+1 provisions, boots, verifies and starts its worker meanwhile; its bootstrap waits
  (`await_handoff`) for the hand-off to close before it picks the checkpoint to upload (an
  attempt preempted before it trained passes the wait on to the next), at most until
  HANDOFF_WAIT_S after the notice, when it closes the hand-off LOST itself and resumes from the
  newest checkpoint that verifies. A checkpoint counts only once it verifies in the store, so
  attempt+1 never resumes from a half-pulled one.

Both sides close the hand-off with a compare-and-set (the first wins; a late pull can no
longer record anything), so redelivered copies of either task are harmless.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from jobs.checkpoint_pull import CheckpointNotKept, store_segment_checkpoint
from jobs.errors import JobsError
from jobs.instances import provider_for, provider_lost_instance, request_termination
from jobs.stage_base import StageContext, preempt
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.errors import StaleAttempt
from queue_app.logs import log_context
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import HandoffStatus, SegmentStatus
from queue_app.store import Store

log = logging.getLogger(__name__)

NOTICE_HANDOFF_TASK = "saefleet.notice.handoff"
HANDOFF_WAIT_S = 150.0
"""How long after the notice the next attempt waits for the noticed checkpoint: EC2's notice
is two minutes, after which the noticed instance is gone."""
HANDOFF_POLL_S = 1.0  # the longest look-again interval of either side


def hand_off_on_notice(ctx: StageContext) -> dict[str, Any]:
    """`supervise_training` on a PREEMPTING job: open the hand-off, send its owner, and start
    the next attempt now (see the module docstring)."""
    job_id, attempt = ctx.ref.job_id, ctx.ref.attempt
    if ctx.attempt().handoff is None:
        opened_at = time.time()
        ctx.store.move_handoff(
            job_id, attempt, None, HandoffStatus.OPEN, handoff_opened_at=opened_at
        )
    app.send_task(
        NOTICE_HANDOFF_TASK,
        kwargs={"job_id": job_id, "attempt": attempt},
        task_id=f"handoff-{job_id}-a{attempt}",
    )
    log.info("the next attempt starts now; the notice's checkpoint is handed off to it")
    return preempt(ctx, ctx.store.job(job_id).reason or "interruption notice", at_once=True)


def await_handoff(ctx: StageContext) -> None:
    """Bootstrap's wait for the hand-off of the attempt it resumes from, when that one was
    noticed: returns once the checkpoint written on notice is kept (recorded as the job's
    latest) or lost, polling until then, at most until HANDOFF_WAIT_S after the notice (then it
    closes it LOST)."""
    record = _resumed_from(ctx)
    if record is None:
        return
    if record.handoff is HandoffStatus.OPEN:
        if not _expired(record):
            ctx.poll(countdown=_poll_s(ctx.settings))
        _close_lost(ctx.store, record, f"not kept within {HANDOFF_WAIT_S:.0f}s of the notice")
        record = ctx.store.attempt(ctx.ref.job_id, record.attempt)
    if record.handoff is HandoffStatus.KEPT and record.handoff_checkpoint:
        checkpoint = record.handoff_checkpoint
        ctx.store.update_job(ctx.ref.job_id, ctx.ref.attempt, latest_checkpoint=checkpoint)


def _resumed_from(ctx: StageContext) -> AttemptRecord | None:
    """The newest earlier attempt that handed a checkpoint off or trained: attempts preempted
    before their first segment wrote nothing, so one noticed before them still hands off to
    this one. None when that attempt was not noticed (or there is none)."""
    for previous in range(ctx.ref.attempt - 1, 0, -1):
        record = ctx.store.attempt(ctx.ref.job_id, previous)
        if record.handoff is not None:
            return record
        if record.segment > 0:
            return None
    return None


@app.task(bind=True, name=NOTICE_HANDOFF_TASK, max_retries=None, ignore_result=True)
def notice_handoff(task: Task, job_id: str, attempt: int) -> None:
    """Hand the noticed `attempt`'s checkpoint off to the next attempt, then terminate its
    instance (looks again every HANDOFF_POLL_S until then)."""
    with log_context(job=job_id, attempt=attempt):
        try:
            countdown = hand_off(get_store(), get_settings(), job_id, attempt)
        except redis.exceptions.ConnectionError:
            raise Reject("redis unavailable", requeue=True) from None
        if countdown is not None:
            raise task.retry(countdown=countdown)


def hand_off(store: Store, settings: Settings, job_id: str, attempt: int) -> float | None:
    """One look at the hand-off: seconds until the next, or None once it is closed and the
    noticed instance released."""
    record = store.attempt(job_id, attempt)
    if record.handoff is None:
        return None  # nothing was handed off by this attempt
    if record.handoff is HandoffStatus.OPEN:
        try:
            countdown = _advance(store, settings, store.job(job_id), record)
        except StaleAttempt:
            log.info("the next attempt closed the hand-off first")
            countdown = None
        if countdown is not None:
            return countdown
    _release(store, settings, job_id, record.instance_id)
    return None


class _NotHandedOff(Exception):
    """The checkpoint written on notice cannot be handed off; the message says why."""


def _advance(
    store: Store, settings: Settings, job: JobRecord, record: AttemptRecord
) -> float | None:
    """Close the hand-off if its outcome is known; else seconds until the next look."""
    try:
        return _look(store, settings, job, record)
    except _NotHandedOff as exc:
        _close_lost(store, record, str(exc))
        return None


def _look(store: Store, settings: Settings, job: JobRecord, record: AttemptRecord) -> float | None:
    """Keep the noticed checkpoint once its segment has ended (closing the hand-off KEPT);
    seconds until the next look while it has not. Raises _NotHandedOff."""
    if record.instance_id is None:
        raise _NotHandedOff("the noticed attempt had no instance")
    if _expired(record):
        raise _NotHandedOff(f"not kept within {HANDOFF_WAIT_S:.0f}s of the notice")
    instance = store.instance(record.instance_id)
    if record.segment_status in (SegmentStatus.SENT, SegmentStatus.RUNNING):
        return _unless_lost(settings, job, instance)
    if record.segment_status is not SegmentStatus.DONE:
        raise _NotHandedOff(record.segment_error or "no segment wrote a checkpoint")
    try:
        name = _keep_noticed(store, settings, job, instance, record)
    except CheckpointNotKept as exc:
        raise _NotHandedOff(str(exc)) from None
    except JobsError as exc:
        if not exc.retryable:
            raise _NotHandedOff(f"the pull failed: {exc}") from None
        log.warning("pulling the notice's checkpoint: %s (trying again)", exc)
        return _unless_lost(settings, job, instance)
    if name is None:
        return _poll_s(settings)  # another process is pulling it
    store.update_attempt(job.job_id, record.attempt, pulled_segment=record.segment)
    store.move_handoff(
        job.job_id, record.attempt, HandoffStatus.OPEN, HandoffStatus.KEPT, handoff_checkpoint=name
    )
    log.info("checkpoint %s written on notice is handed off", name)
    return None


def _keep_noticed(
    store: Store,
    settings: Settings,
    job: JobRecord,
    instance: InstanceRecord,
    record: AttemptRecord,
) -> str | None:
    """Pull the checkpoint written on notice into the store (a pack's: every member's, into the
    member's own place; one that does not verify is left out, and that member resumes from
    its previous one); its name (a pack's: the stream position), None while another process
    pulls. CheckpointNotKept when nothing is kept."""
    if not job.members:
        return store_segment_checkpoint(store, settings, job, instance, record)
    names = []
    for member_id, outcome in record.member_outcomes.items():
        if not outcome.get("checkpoint"):
            continue
        own = record.model_copy(
            update={"job_id": member_id, "segment_checkpoint": outcome["checkpoint"]}
        )
        try:
            name = store_segment_checkpoint(store, settings, store.job(member_id), instance, own)
        except CheckpointNotKept as exc:
            log.warning("member %s's checkpoint written on notice is not kept: %s", member_id, exc)
            continue
        if name is None:
            return None
        names.append(name)
    if not names:
        raise CheckpointNotKept("no member's checkpoint written on notice is kept")
    return max(names)


def _unless_lost(settings: Settings, job: JobRecord, instance: InstanceRecord) -> float:
    """Seconds until the next look, unless the provider lost the instance (_NotHandedOff)."""
    lost = provider_lost_instance(provider_for(job.job_spec.provider, settings), instance)
    if lost is not None:
        raise _NotHandedOff(lost)
    return _poll_s(settings)


def _close_lost(store: Store, record: AttemptRecord, why: str) -> None:
    """Close the hand-off LOST (unless someone closed it first): nothing is handed off."""
    if store.move_handoff(
        record.job_id, record.attempt, HandoffStatus.OPEN, HandoffStatus.LOST, handoff_note=why
    ):
        log.warning("the checkpoint written on notice is not handed off: %s", why)


def _release(store: Store, settings: Settings, job_id: str, instance_id: str | None) -> None:
    """Best effort: terminate the noticed instance (the job's terminate stage and the
    watchdog's orphan check back this up)."""
    if instance_id is None:
        return
    try:
        provider = provider_for(store.job(job_id).job_spec.provider, settings)
        request_termination(store, provider, store.instance(instance_id))
    except Exception as exc:
        log.warning("terminating the noticed instance %s failed for now: %s", instance_id, exc)


def _expired(record: AttemptRecord) -> bool:
    return time.time() - (record.handoff_opened_at or 0) > HANDOFF_WAIT_S


def _poll_s(settings: Settings) -> float:
    return min(settings.poll_interval_s, HANDOFF_POLL_S)
