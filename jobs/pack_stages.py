"""The control plane of a pack: the pack job (`JobRecord.members`) runs the ordinary stages
on one instance for all its members, whose records follow its state (queue_app.pack_mirror).
This module holds what is a member's own:

- `follow_pack`: a member's place in the sweep chord (jobs.canvas). It polls the member's
  record and hands the chord the member's JobResult once the member is final and so is its
  cost share (every instance it trained on is gone).
- `pull_pack_checkpoints`: after a segment, every member's checkpoint (all at the same
  stream position) into that member's own place in the store (jobs.pack_checkpoints: uploaded
  in the background or pulled). A member whose checkpoint is not kept fails alone.
- `settle_members`: after the pull, a member whose run finished is collected and SUCCEEDED, one
  that failed (NaN loss, its own error) is FAILED, one asked to stop for its cost cap is
  COST_CAPPED; a cancelled member already is. Each leaves the pack: the instance records when
  (its cost share ends, jobs.job_cost) and the next segment trains the rest.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject

from jobs.collect import collect_final
from jobs.errors import JobsError
from jobs.job_cost import job_instances
from jobs.pack_checkpoints import keep_pack_checkpoints
from jobs.pipeline import FOLLOW_PACK_TASK, JobRef
from jobs.remote import layout_for
from jobs.results import job_result
from jobs.stage_base import MAX_COUNTDOWN_S, StageContext
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.pack_mirror import following_members
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import get_settings
from queue_app.statemachine import JobState
from queue_app.store import Store

log = logging.getLogger(__name__)

SUCCESS_STEPS = (JobState.COLLECTING, JobState.TERMINATING, JobState.SUCCEEDED)


@app.task(bind=True, name=FOLLOW_PACK_TASK, max_retries=None)
def follow_pack(task: Task, ref: dict[str, Any]) -> dict[str, Any]:
    """The member's JobResult once it is final; until then, look again after a poll."""
    job_ref = JobRef.model_validate(ref)
    store = get_store()
    try:
        job = store.job(job_ref.job_id)
    except NotFoundError:
        raise Ignore() from None
    except redis.exceptions.ConnectionError:
        raise Reject("redis unavailable", requeue=True) from None
    if not job.terminal or not _cost_final(store, job):
        raise task.retry(countdown=min(get_settings().poll_interval_s, MAX_COUNTDOWN_S))
    return job_result(store, job_ref.job_id).model_dump(mode="json")


def _cost_final(store: Store, job: JobRecord) -> bool:
    """The member's cost share can grow no more: every instance it trained on is gone (the last
    members to leave share an instance's time until it is), or its pack has ended."""
    instances = job_instances(store, job.job_id)
    return all(i.terminated_at for i in instances) or store.job(job.pack_id or "").terminal


def pull_pack_checkpoints(
    ctx: StageContext, instance: InstanceRecord, record: AttemptRecord
) -> bool:
    """Keep every member's checkpoint of `record`'s segment (jobs.pack_checkpoints); a member
    whose checkpoint is not kept fails alone. False while one is not settled yet."""
    checkpoints = keep_pack_checkpoints(ctx.store, ctx.settings, ctx.job, instance, record)
    if not checkpoints.settled:
        return False
    for member_id, why in checkpoints.lost.items():
        _leave(ctx, member_id, JobState.FAILED, f"its checkpoint is not kept: {why}")
    return True


def settle_members(ctx: StageContext, instance: InstanceRecord, record: AttemptRecord) -> bool:
    """Settle each member that finished, failed or was asked to stop in `record`'s segment;
    True when no member is left training."""
    attempt = record.attempt
    for member_id in following_members(ctx.store, ctx.ref.job_id, attempt):
        outcome = record.member_outcomes.get(member_id, {})
        stop = ctx.store.job(member_id).stop_requested
        if outcome.get("error"):
            _leave(ctx, member_id, JobState.FAILED, f"pack member failed: {outcome['error']}")
        elif outcome.get("done"):
            _collect_member(ctx, instance, member_id)
        elif stop == "cost_cap":
            kept = ctx.store.job(member_id).latest_checkpoint or "none was taken"
            why = f"stopped on request (cost_cap); last checkpoint kept: {kept}"
            _leave(ctx, member_id, JobState.COST_CAPPED, why)
    _record_leavers(ctx, instance)
    return not following_members(ctx.store, ctx.ref.job_id, attempt)


def _collect_member(ctx: StageContext, instance: InstanceRecord, member_id: str) -> None:
    """The member's final/ into the store, then SUCCEEDED (FAILED when it cannot be kept)."""
    ref = ctx.ref.model_copy(update={"job_id": member_id})
    remote_final = posixpath.join(layout_for(instance).run_dir, member_id, "final")
    try:
        collect_final(ctx.settings, ctx.store, instance, ref, remote_final)
    except JobsError as exc:
        _leave(ctx, member_id, JobState.FAILED, f"collect: {exc}")
        return
    for state in SUCCESS_STEPS:
        _move(ctx, member_id, state, None)


def _leave(ctx: StageContext, member_id: str, state: JobState, reason: str) -> None:
    log.warning("pack member %s leaves the pack %s: %s", member_id, state, reason)
    _move(ctx, member_id, state, reason)


def _move(ctx: StageContext, member_id: str, state: JobState, reason: str | None) -> None:
    try:
        ctx.store.transition(member_id, ctx.ref.attempt, state, reason=reason, allow_same=True)
    except (IllegalTransition, StaleAttempt) as exc:
        log.info("pack member %s stays: %s", member_id, exc)


def _record_leavers(ctx: StageContext, instance: InstanceRecord) -> None:
    """Note on the instance when each member that is no longer training on it left."""
    training = set(following_members(ctx.store, ctx.ref.job_id, ctx.ref.attempt))
    left = dict(instance.member_left_at)
    now = time.time()
    for member in instance.members:
        if member not in training and member not in left:
            left[member] = now
    if left != instance.member_left_at:
        ctx.store.update_instance(instance.instance_id, member_left_at=left)
