"""The watchdog's three interventions, each idempotent and fenced by the job's attempt:

- `interrupt`: mark the attempt PREEMPTED, revoke its in-flight training segment, terminate its
  instance. The control-plane stage that follows the job sees PREEMPTED and resumes as
  attempt+1 from the newest checkpoint (jobs.stage_base.resume); the watchdog never builds
  chains itself.
- `cost_cap`: the job ends COST_CAPPED (its last pulled checkpoint is kept), segment revoked,
  instance terminated.
- `pause`: the job waits PAUSED (its checkpoint pulled before, see watchdog.drain), segment
  revoked, instance terminated; `queue drain --undo` resumes it (jobs.stage_base.resume_paused).
- `terminate_instance`: ask the provider to terminate an instance (already gone is success).
"""

from __future__ import annotations

import logging
from typing import Any

from jobs.instances import request_termination
from jobs.providers import Provider, ProviderError
from queue_app.celery_app import segment_task_id
from queue_app.errors import IllegalTransition, StaleAttempt
from queue_app.statemachine import JobState
from watchdog.context import TickContext
from watchdog.fleet import Tracked

log = logging.getLogger(__name__)


def provider_of(ctx: TickContext, tracked: Tracked) -> Provider:
    return ctx.providers(tracked.provider_spec)


def interrupt(ctx: TickContext, check: str, tracked: Tracked, why: str) -> bool:
    """Preempt the tracked instance's attempt; False when the job already moved on."""
    job, instance = tracked.job, tracked.instance
    if job is None:
        return False
    checkpoint = f"latest {job.latest_checkpoint}" if job.latest_checkpoint else "none yet"
    reason = (
        f"{why}; resuming as attempt {instance.attempt + 1} from the newest checkpoint that "
        f"verifies ({checkpoint}) unless max_attempts or max_preemptions is reached"
    )
    preemptions = job.preemptions + 1
    return _end_attempt(
        ctx, check, tracked, (JobState.PREEMPTED, "preempted"), reason, preemptions=preemptions
    )


def cost_cap(ctx: TickContext, tracked: Tracked, why: str) -> bool:
    """End the job COST_CAPPED now; False when it already moved on."""
    job = tracked.job
    if job is None:
        return False
    kept = job.latest_checkpoint or "no checkpoint was taken"
    reason = f"{why}; instance terminated, last checkpoint kept ({kept})"
    return _end_attempt(ctx, "costs", tracked, (JobState.COST_CAPPED, "capped"), reason)


def pause(ctx: TickContext, check: str, tracked: Tracked, why: str) -> bool:
    """Move the job to PAUSED now; False when it already moved on."""
    job, instance = tracked.job, tracked.instance
    if job is None:
        return False
    kept = ctx.store.job(job.job_id).latest_checkpoint
    reason = (
        f"{why}; paused at no cost with its newest checkpoint ({kept or 'none taken yet'}), "
        f"instance terminated; `queue drain --undo` resumes it as attempt {instance.attempt + 1}"
    )
    return _end_attempt(ctx, check, tracked, (JobState.PAUSED, "paused"), reason)


def _end_attempt(
    ctx: TickContext,
    check: str,
    tracked: Tracked,
    to: tuple[JobState, str],
    reason: str,
    **fields: Any,
) -> bool:
    """Move the attempt's job to the state `to` names (the action reported as its kind), record
    why the attempt ended, revoke its segment and terminate its instance; False when the job
    already moved on."""
    (target, kind), job_id = to, tracked.instance.job_id
    attempt = tracked.instance.attempt
    try:
        ctx.store.transition(job_id, attempt, target, reason=reason, **fields)
    except (StaleAttempt, IllegalTransition) as exc:
        log.info("%s: not moving %s to %s, it moved on: %s", check, job_id, target, exc)
        return False
    ctx.store.end_attempt(job_id, attempt, reason)
    ctx.report.add(check, kind, job_id, reason)
    _stop_attempt(ctx, check, tracked)
    return True


def terminate_instance(ctx: TickContext, check: str, tracked: Tracked, why: str) -> None:
    """Ask the provider to terminate the instance; a failure is retried next tick."""
    try:
        request_termination(ctx.store, provider_of(ctx, tracked), tracked.instance)
    except ProviderError as exc:
        ctx.report.error(check, tracked.instance.instance_id, f"terminate failed: {exc}")
        return
    ctx.report.add(check, "terminated", tracked.instance.instance_id, why)


def _stop_attempt(ctx: TickContext, check: str, tracked: Tracked) -> None:
    """Revoke the attempt's training segment (if any) and terminate its instance."""
    attempt, instance = tracked.attempt, tracked.instance
    if attempt is not None and attempt.segment > 0:
        ctx.revoke(segment_task_id(attempt.job_id, attempt.attempt, attempt.segment))
    terminate_instance(
        ctx, check, tracked, f"attempt {instance.attempt} of job {instance.job_id} ended"
    )
