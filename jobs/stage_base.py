"""What every lifecycle stage does around its own work: fencing, pass-through, retries of
transient errors, and turning failures and preemptions into results instead of exceptions.

A stage's body receives a `StageContext` and either returns (the chain moves on), polls again
(`ctx.poll`), or raises. The wrapper decides what a raise means:

    StageFailed / any error      -> was the instance lost? yes: preemption, no: job FAILED
    JobsError with `retryable`   -> retried with backoff, then treated as a failure
    InstanceLost                 -> preemption: attempt+1 resumes by replacing this task
    OutOfGPUMemory               -> attempt+1 on a larger GPU type, a pack split (jobs.pack_split),
                                    or FAILED when neither is left
    StaleAttempt                 -> the task is late: it does nothing (Ignore)
    IllegalTransition after a copy of the task moved the job on -> this copy stops (Ignore)
    redis ConnectionError        -> the message goes back to the broker (Reject, requeue)

A message for an attempt whose job is already past its stage (a redelivered copy) passes the
job on without running the body. A FAILED job's chain still runs to `terminate`, which returns
the JobResult, so the sweep chord completes; no exception ever leaves a chord header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from jobs.errors import InstanceLost, JobsError, OutOfGPUMemory, StageFailed
from jobs.instances import provider_for, provider_lost_instance
from jobs.instances import request_termination as _request_termination
from jobs.oom import memory_move_fields, note_out_of_memory, nothing_larger, plan_move
from jobs.pack_split import complete_split, pack_split_plan, split_pack
from jobs.pipeline import STAGES, JobRef, job_is_past, stage_chain, stage_task_name
from jobs.providers import Provider
from jobs.results import job_result
from queue_app.admission import drain_state
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.jobspec import JobConfig
from queue_app.logs import log_context
from queue_app.notify import Event, notify
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import HandoffStatus, JobState
from queue_app.store import Store

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6
MAX_COUNTDOWN_S = 40.0  # stays below the broker's visibility timeout (60 s)
# A job waiting for its next attempt: the replacement chain's provision begins it.
RESUMABLE = frozenset({JobState.PREEMPTED, JobState.PAUSED})


def backoff(n: int, base: float = 2.0, cap: float = MAX_COUNTDOWN_S) -> float:
    """Countdown before retry `n` (1-based): base * 2**(n-1), capped."""
    return min(cap, base * 2 ** max(0, n - 1))


@dataclass
class StageContext:
    """What a stage body works with."""

    task: Task
    stage: str
    ref: JobRef
    store: Store
    settings: Settings
    job: JobRecord
    started: float = field(default_factory=time.time)

    @property
    def config(self) -> JobConfig:
        return self.job.job_spec.config

    @cached_property
    def provider(self) -> Provider:
        return provider_for(self.job.job_spec.provider, self.settings)

    def attempt(self) -> AttemptRecord:
        return self.store.attempt(self.ref.job_id, self.ref.attempt)

    def instance(self) -> InstanceRecord | None:
        """This attempt's instance, if one was launched."""
        instance_id = self.attempt().instance_id
        return self.store.instance(instance_id) if instance_id else None

    def require_instance(self) -> InstanceRecord:
        instance = self.instance()
        if instance is None:
            raise StageFailed(f"attempt {self.ref.attempt} has no instance")
        return instance

    def advance(self, target: JobState, **fields: Any) -> None:
        """Move the job to `target` (a repeat by a redelivered task is harmless)."""
        self.store.transition(self.ref.job_id, self.ref.attempt, target, allow_same=True, **fields)

    def update_attempt(self, **fields: Any) -> None:
        self.store.update_attempt(self.ref.job_id, self.ref.attempt, **fields)

    def poll(self, countdown: float | None = None) -> NoReturn:
        """Run this stage again after `countdown` seconds (default: the poll interval)."""
        delay = min(countdown or self.settings.poll_interval_s, MAX_COUNTDOWN_S)
        raise self.task.retry(countdown=delay)


def stage(name: str, **task_options: Any) -> Callable[[Callable[[StageContext], Any]], Task]:
    """Register `body` as the Celery task of lifecycle stage `name`."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")
    return stage_task(stage_task_name(name), name, keeps_result=name == STAGES[-1], **task_options)


def stage_task(
    task_name: str, name: str, *, keeps_result: bool = False, **task_options: Any
) -> Callable[[Callable[[StageContext], Any]], Task]:
    """Register `body` as Celery task `task_name`, run by `run_stage` as stage `name`: the
    lifecycle stages use it through `stage`, the queue benchmark for its no-op stages.

    Only the chain's last stage (`keeps_result`) stores its result in the backend: a chain
    hands each result to the next stage inside the message, the sweep chord counts its
    headers whether or not they store one, and nobody reads the others; storing them would
    cost a Redis round trip per stage and memory until they expire."""

    def register(body: Callable[[StageContext], Any]) -> Task:
        def run(task: Task, ref: dict[str, Any]) -> dict[str, Any]:
            return run_stage(task, name, JobRef.model_validate(ref), body)

        run.__name__ = run.__qualname__ = name
        run.__doc__ = body.__doc__
        # Waits are polls (Task.retry); how long a stage may wait is bounded by the stage
        # itself (deadlines in the attempt record), never by Celery's retry counter.
        options = {"max_retries": None, "ignore_result": not keeps_result, **task_options}
        return app.task(bind=True, name=task_name, **options)(run)

    return register


def _is_current(stage: str, ref: JobRef, job: JobRecord) -> bool:
    if ref.attempt == job.attempt:
        return True
    # The replacement chain's provision may run before the attempt was begun.
    return stage == "provision" and job.state in RESUMABLE and ref.attempt == job.attempt + 1


def run_stage(
    task: Task, stage: str, ref: JobRef, body: Callable[[StageContext], Any]
) -> dict[str, Any]:
    with log_context(sweep=ref.sweep_id, job=ref.job_id, attempt=ref.attempt):
        ctx = _load(task, stage, ref)
        if ctx.job.terminal and stage != "terminate":
            return ref.message()  # pass through to terminate, which returns the result
        if ctx.job.state is JobState.PREEMPTED and ref.attempt == ctx.job.attempt:
            complete_split(ctx.store, ref, ctx.job)  # a redelivery after a crash mid-split
            return resume(ctx, ctx.job.reason or "preempted")
        if ctx.job.state is JobState.PAUSED and ref.attempt == ctx.job.attempt:
            return resume_paused(ctx)
        if ref.attempt == ctx.job.attempt and job_is_past(stage, ctx.job.state):
            # A duplicate: its work is done. Passing the job on is harmless (later stages
            # pass it on too, the chord counts a header once) and continues the chain when
            # the first copy died before it could.
            log.info("%s: the job is already %s; this copy passes it on", stage, ctx.job.state)
            return ref.message()
        try:
            result = body(ctx)
        except (Retry, Ignore, Reject):
            raise
        except Exception as exc:
            return _handle_error(ctx, exc)
        return result if result is not None else ref.message()


def _load(task: Task, stage: str, ref: JobRef) -> StageContext:
    """The job's context, or Ignore when the message is for a gone job or a stale attempt."""
    store = get_store()
    try:
        job = store.job(ref.job_id)
    except NotFoundError:
        log.error("%s: job %s does not exist; dropping the message", stage, ref.job_id)
        raise Ignore() from None
    except redis.exceptions.ConnectionError:
        raise Reject("redis unavailable", requeue=True) from None
    if not _is_current(stage, ref, job):
        log.info("%s: attempt %s is stale (job at %s); ignored", stage, ref.attempt, job.attempt)
        raise Ignore()
    return StageContext(task, stage, ref, store, get_settings(), job)


def _handle_error(ctx: StageContext, exc: Exception) -> dict[str, Any]:
    """What a raised error means for the job (see the module docstring)."""
    if isinstance(exc, StaleAttempt):
        log.info("%s: attempt %s went stale while running; ignored", ctx.stage, ctx.ref.attempt)
        raise Ignore() from None
    if isinstance(exc, redis.exceptions.ConnectionError):
        raise Reject("redis unavailable", requeue=True) from None
    if isinstance(exc, IllegalTransition) and _moved_on_by_twin(ctx):
        log.info("%s: a copy of this task moved the job on; this one stops", ctx.stage)
        raise Ignore() from None
    reason = f"{ctx.stage}: {exc}"
    if isinstance(exc, InstanceLost):
        return preempt(ctx, reason)
    if isinstance(exc, OutOfGPUMemory):
        return resume_on_larger_type(ctx, reason)
    if isinstance(exc, JobsError) and exc.retryable:
        # An SSH error to a preempted instance looks transient: ask before retrying it.
        settled = settle_if_interrupted(ctx, reason)
        if settled is not None:
            return settled
        tries = ctx.store.count_attempt_event(
            ctx.ref.job_id, ctx.ref.attempt, f"transient:{ctx.stage}"
        )
        if tries <= MAX_TRANSIENT_RETRIES:
            log.warning("%s: transient error (try %d): %s", ctx.stage, tries, exc)
            raise ctx.task.retry(countdown=backoff(tries)) from None
    if not isinstance(exc, StageFailed):
        log.error("%s failed", ctx.stage, exc_info=exc)
    return fail_or_preempt(ctx, reason)


def _moved_on_by_twin(ctx: StageContext) -> bool:
    """While this copy ran, another copy of it advanced the same attempt past this stage."""
    job = ctx.store.job(ctx.ref.job_id)
    return job.attempt == ctx.ref.attempt and job_is_past(ctx.stage, job.state)


def fail_or_preempt(ctx: StageContext, reason: str) -> dict[str, Any]:
    """A stage failed: if its attempt was interrupted it resumes (or passes on), else FAILED."""
    settled = settle_if_interrupted(ctx, reason)
    return settled if settled is not None else fail(ctx, reason)


def settle_if_interrupted(ctx: StageContext, reason: str) -> dict[str, Any] | None:
    """The stage's result when its attempt was interrupted, else None.

    The watchdog may have preempted the attempt (its instance is being terminated, which is
    why the stage failed): the job resumes. It may have ended the job (cost cap, cancel): the
    chain passes the job on to `terminate`. Or the provider lost the instance without anyone
    noticing yet: that is a preemption."""
    job = ctx.store.job(ctx.ref.job_id)
    if job.attempt == ctx.ref.attempt and job.state is JobState.PREEMPTED:
        return resume(ctx, job.reason or reason)
    if job.attempt == ctx.ref.attempt and job.state is JobState.PAUSED:
        return resume_paused(ctx)
    if job.attempt == ctx.ref.attempt and job.terminal:
        release_instance(ctx)
        return pass_on(ctx)
    instance = ctx.instance()
    if instance is None:
        return None
    try:
        lost = provider_lost_instance(ctx.provider, instance)
    except Exception as exc:
        log.warning("could not ask %s about %s: %s", ctx.provider.name, instance.instance_id, exc)
        return None
    return preempt(ctx, f"{lost} ({reason})") if lost else None


def fail(ctx: StageContext, reason: str) -> dict[str, Any]:
    """Record the failure, terminate the instance, and let the chain carry the result on."""
    log.error("job failed: %s", reason)
    ctx.store.transition(ctx.ref.job_id, ctx.ref.attempt, JobState.FAILED, reason=reason)
    notify(Event.JOB_FAILED, **_ids(ctx), reason=reason)
    end_attempt(ctx, reason)
    release_instance(ctx)
    return pass_on(ctx)


def pass_on(ctx: StageContext) -> dict[str, Any]:
    """What a stage that is not going on hands the chain: the job for the next stage, or from
    `terminate`, the chain's last stage, the job's result (the sweep chord gets data even when
    terminate itself failed)."""
    if ctx.stage == STAGES[-1]:
        return job_result(ctx.store, ctx.ref.job_id).model_dump(mode="json")
    return ctx.ref.message()


def preempt(ctx: StageContext, reason: str, at_once: bool = False) -> dict[str, Any]:
    """Mark the attempt PREEMPTED (unless the watchdog already did), then resume (`at_once`:
    with no back-off, as after an interruption notice whose checkpoint is home)."""
    job = ctx.store.job(ctx.ref.job_id)
    if job.state is not JobState.PREEMPTED:
        ctx.store.transition(
            ctx.ref.job_id,
            ctx.ref.attempt,
            JobState.PREEMPTED,
            reason=reason,
            preemptions=job.preemptions + 1,
        )
        notify(Event.JOB_PREEMPTED, **_ids(ctx), reason=reason)
    return resume(ctx, reason, at_once=at_once)


def resume_on_larger_type(ctx: StageContext, reason: str) -> dict[str, Any]:
    """Out of memory at the smallest micro-batch (jobs.oom): attempt+1 on an allowed type with
    more GPU memory per GPU, at once, from the newest checkpoint; a pack that fits no larger
    type whole splits instead; FAILED when nothing is left to try."""
    if ctx.store.job(ctx.ref.job_id).state is not JobState.TRAINING:
        return fail_or_preempt(ctx, reason)  # the watchdog or a user moved it meanwhile
    instance = ctx.instance()
    plan = plan_move(
        ctx.provider,
        ctx.config,
        ctx.job.job_spec.provider,
        instance.instance_type if instance else None,
    )
    split = pack_split_plan(ctx.store, ctx.job, ctx.ref.attempt, plan)
    if split is not None:  # a pack that fits no larger type whole
        why = f"{reason}; {split.note}"
        ctx.store.transition(ctx.ref.job_id, ctx.ref.attempt, JobState.PREEMPTED, reason=why)
        split_pack(ctx.store, ctx.ref, split)
        return resume(ctx, why, at_once=True)
    if not plan.larger:
        return fail(ctx, nothing_larger(ctx.store, ctx.ref.job_id, ctx.config, plan, reason))
    why = f"{reason}; next attempt on a type with more GPU memory than {plan.ran_out_on}"
    note_out_of_memory(ctx.store, ctx.ref.attempt, [ctx.ref.job_id], why)
    ctx.store.update_job(
        ctx.ref.job_id,
        ctx.ref.attempt,
        gpu_memory_above_gb=plan.memory_gb,
        **memory_move_fields(ctx.store.job(ctx.ref.job_id)),
    )
    ctx.store.transition(ctx.ref.job_id, ctx.ref.attempt, JobState.PREEMPTED, reason=why)
    return resume(ctx, why, at_once=True)


def resume(
    ctx: StageContext, reason: str, paused: bool = False, at_once: bool = False
) -> dict[str, Any]:
    """Start attempt+1 from `provision` by replacing this task, so the chain's remaining
    stages (and the chord slot) carry on with the new attempt. A `paused` job resumes at once
    and its pause counts neither as an attempt given up on nor as a preemption."""
    end_attempt(ctx, reason)
    release_instance(ctx)
    job = ctx.store.job(ctx.ref.job_id)
    config = ctx.config
    history = f"{job.preemptions} preemption(s), last: {reason}"
    if not paused and job.attempt - _pauses(ctx) - job.memory_moves >= config.max_attempts:
        return fail(ctx, f"gave up after {job.attempt} attempts (max_attempts): {history}")
    if config.capacity == "spot" and job.preemptions > config.max_preemptions:
        return fail(ctx, f"spot job preempted more than max_preemptions: {history}")
    countdown = None if paused or at_once else backoff(job.attempt, base=5.0)
    log.warning("resuming as attempt %d in %.0fs: %s", job.attempt + 1, countdown or 0, reason)
    notify(Event.JOB_RESUMED, **_ids(ctx), next_attempt=job.attempt + 1, reason=reason)
    replacement = stage_chain(ctx.ref.next_attempt(), last=ctx.stage, countdown=countdown)
    raise ctx.task.replace(replacement)


def resume_paused(ctx: StageContext) -> dict[str, Any]:
    """A PAUSED job (watchdog.drain): while the queue is drained this message waits, holding
    the job's chord slot; once it is not, the job resumes as attempt+1 from its checkpoint."""
    if drain_state(ctx.store.r) is not None:
        ctx.poll()
    return resume(ctx, "resumed after a drain", paused=True)


def _pauses(ctx: StageContext) -> int:
    """How many of the job's attempts ended paused by a drain (they are not given up on)."""
    return sum(1 for e in ctx.store.events(ctx.ref.job_id) if e.get("to") == JobState.PAUSED)


def _ids(ctx: StageContext) -> dict[str, Any]:
    return {"sweep": ctx.ref.sweep_id, "job": ctx.ref.job_id, "attempt": ctx.ref.attempt}


def end_attempt(ctx: StageContext, reason: str) -> None:
    ctx.store.end_attempt(ctx.ref.job_id, ctx.ref.attempt, reason)


def release_instance(ctx: StageContext) -> None:
    """Best effort: ask the provider to terminate this attempt's instance now (the terminate
    stage confirms it later; the watchdog's orphan check backs both up). An instance whose
    notice hand-off is open is left to it (jobs.notice_handoff terminates it after the pull)."""
    record = ctx.attempt()
    if record.instance_id is None or record.handoff is HandoffStatus.OPEN:
        return
    instance = ctx.store.instance(record.instance_id)
    try:
        _request_termination(ctx.store, ctx.provider, instance)
    except Exception as exc:
        log.warning("terminating %s failed for now: %s", instance.instance_id, exc)
