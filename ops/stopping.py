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
from jobs.ssh import SSHError
from ops.steps import StepReport
from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.records import JobRecord
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
    checkpoint and cancel it. A segment still running after `timeout_s` is reported lost."""
    training = [
        j.job_id for j in store.jobs(store.job_ids(limit=100_000)) if j.state is JobState.TRAINING
    ]
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
    for job_id in waiting:
        job = store.job(job_id)
        stop.lost[job_id] = (
            f"its segment still trained after {timeout_s:.0f}s; the steps after "
            f"{job.latest_checkpoint or 'its start'} are lost with the instance"
        )
        if cancel_job(store, job_id, reason) is not None:
            stop.cancelled[job_id] = job.latest_checkpoint or ""
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
                if not pull_segment_checkpoint(store, settings, job, instance, record):
                    return False
            except StaleAttempt:
                return False
            except (CheckpointNotKept, SSHError, StoreError, NotFoundError) as exc:
                stop.lost[job_id] = f"segment {record.segment} could not be kept: {exc}"
    cancelled = cancel_job(store, job_id, reason)
    if cancelled is None:
        stop.ended[job_id] = str(store.job(job_id).state)
    else:
        stop.cancelled[job_id] = cancelled.latest_checkpoint or ""
    return True
