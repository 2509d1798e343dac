"""Ending jobs from the command line: the one way to cancel a job (`job cancel`, teardown), and
teardown's stop of the training jobs with each one's newest checkpoint kept.

Teardown pulls a stopped segment's checkpoint itself (jobs.checkpoint_pull, the function
`supervise_training` uses): the pull must not depend on a control worker that a drain, or the
operator, stopped consuming. A job is reported with a checkpoint kept only when that checkpoint
verified in the store.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from jobs.checkpoint_pull import CheckpointNotKept, pull_segment_checkpoint
from jobs.objectstore import StoreError
from jobs.pack_checkpoints import keep_pack_checkpoints
from jobs.ssh import SSHError
from ops.steps import StepReport
from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.pack_mirror import following_members
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store

CANCEL_REQUEST = "cancel"  # the stop flag: training checkpoints at its next step
CANCEL_TRIES = 5
POLL_S = 0.5


def kept_checkpoint(job: JobRecord) -> str:
    """What a cancelled job keeps, in words (latest_checkpoint is set only once it verified)."""
    if job.latest_checkpoint:
        return f"last checkpoint kept: {job.latest_checkpoint}"
    return "no checkpoint was taken"


def cancel_job(store: Store, job_id: str, reason: str) -> JobRecord | None:
    """Move a job to CANCELLED, its stop flag raised first so that training stops at its next
    step; the reason names the checkpoint kept. None when the job has finished or is
    terminating (its work is done). A compare-and-set lost to a stage that moved the job
    meanwhile is tried again."""
    for _ in range(CANCEL_TRIES):
        job = store.job(job_id)
        if job.terminal or job.state is JobState.TERMINATING:
            return None
        try:
            store.update_job(job_id, job.attempt, stop_requested=CANCEL_REQUEST)
            why = f"{reason}; {kept_checkpoint(job)}"
            store.transition(job_id, job.attempt, JobState.CANCELLED, reason=why)
            return store.job(job_id)
        except (IllegalTransition, StaleAttempt):
            time.sleep(0.1)  # a stage moved it meanwhile: look again
    return None


@dataclass
class TrainingStop:
    """Where each training job's stop ended: cancelled (job id -> checkpoint kept, "" for
    none), ended by the control plane first, or not kept (job id -> what was lost)."""

    cancelled: dict[str, str] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)


def stop_training(
    store: Store, settings: Settings, report: StepReport, reason: str, timeout_s: float
) -> TrainingStop:
    """Ask every training job to stop at its next step; as each one's segment ends, keep its
    checkpoint and cancel it. A segment still running after `timeout_s` is reported lost. A
    pack's members stop with their pack, which keeps each member's checkpoint (and reports
    each member, not the pack)."""
    live = [j for j in store.jobs(store.job_ids(limit=100_000)) if j.state is JobState.TRAINING]
    packs = {j.job_id for j in live if j.members}
    training = [j.job_id for j in live if j.pack_id not in packs]
    for job in store.jobs(training):
        with contextlib.suppress(StaleAttempt):  # resumed meanwhile: looked at again below
            store.update_job(job.job_id, job.attempt, stop_requested=CANCEL_REQUEST)
    stop, waiting = TrainingStop(), list(training)
    deadline = time.monotonic() + timeout_s
    while waiting:
        waiting = [j for j in waiting if not _settle(store, settings, j, reason, stop)]
        if not waiting or time.monotonic() >= deadline:
            break
        report.note(f"waiting for {len(waiting)} segment(s) to checkpoint: {', '.join(waiting)}")
        time.sleep(POLL_S)
    for job in store.jobs(waiting):
        _cancel(store, job, reason, stop, still_training_after_s=timeout_s)
    return stop


def _settle(store: Store, settings: Settings, job_id: str, reason: str, stop: TrainingStop) -> bool:
    """One look at a stopping job: True once it is dealt with, False while its segment trains
    (or another process is pulling its checkpoint)."""
    job = store.job(job_id)
    if job.terminal or job.state is JobState.TERMINATING:
        stop.ended[job_id] = str(job.state)  # the control plane ended it first
        return True
    if job.state is JobState.TRAINING:
        record = store.attempt(job_id, job.attempt)
        if record.segment_status == "running":
            return False
        if record.segment_status == "done" and record.pulled_segment < record.segment:
            try:
                instance = store.instance(record.instance_id or "")
                lost = _keep_checkpoint(store, settings, job, instance, record)
            except StaleAttempt:
                return False
            except (SSHError, StoreError, NotFoundError) as exc:
                lost = {m: str(exc) for m in _stopping(store, job)}
            if lost is None:
                return False
            for member_id, why in lost.items():
                stop.lost[member_id] = f"segment {record.segment} could not be kept: {why}"
    _cancel(store, job, reason, stop)
    return True


def _keep_checkpoint(
    store: Store,
    settings: Settings,
    job: JobRecord,
    instance: InstanceRecord,
    record: AttemptRecord,
) -> dict[str, str] | None:
    """Keep the finished segment's checkpoint (a pack's: every member's); the jobs whose one
    was not kept, with why, or None while it is not settled yet."""
    if job.members:
        checkpoints = keep_pack_checkpoints(store, settings, job, instance, record)
        return checkpoints.lost if checkpoints.settled else None
    try:
        return {} if pull_segment_checkpoint(store, settings, job, instance, record) else None
    except CheckpointNotKept as exc:
        return {job.job_id: str(exc)}


def _stopping(store: Store, job: JobRecord) -> list[str]:
    """The jobs a stop of `job` ends: itself, or a pack's members still in it."""
    return following_members(store, job.job_id, job.attempt) if job.members else [job.job_id]


def _cancel(
    store: Store,
    job: JobRecord,
    reason: str,
    stop: TrainingStop,
    still_training_after_s: float | None = None,
) -> None:
    """Cancel the job (a pack: each member still in it first, each naming its own checkpoint,
    then the pack); with `still_training_after_s`, its segment never ended: what it trained
    since its newest checkpoint is lost."""
    for job_id in _stopping(store, job):
        if still_training_after_s is not None:
            kept = store.job(job_id).latest_checkpoint or "its start"
            stop.lost[job_id] = (
                f"its segment still trained after {still_training_after_s:.0f}s; the steps "
                f"after {kept} are lost with the instance"
            )
        cancelled = cancel_job(store, job_id, reason)
        if cancelled is None:
            stop.ended[job_id] = str(store.job(job_id).state)
        else:
            stop.cancelled[job_id] = cancelled.latest_checkpoint or ""
    if job.members:
        cancel_job(store, job.job_id, reason)
