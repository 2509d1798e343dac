"""The order of a job's lifecycle stages and the chains built from them.

Stages are addressed by task name, so this module imports no stage module: stage modules use it
to build the replacement chain that resumes a job, and the canvas uses it to build the job chain.
"""

from __future__ import annotations

from typing import Any

from celery import Signature, chain
from pydantic import BaseModel, ConfigDict

from queue_app.celery_app import app
from queue_app.statemachine import JobState

STAGES = (
    "provision",
    "await_ready",
    "verify_gpu",
    "bootstrap",
    "supervise_training",
    "collect",
    "terminate",
)
FINALIZE_SWEEP_TASK = "saefleet.sweep.finalize"
FOLLOW_PACK_TASK = "saefleet.pack.follow"

# The job states of the success path, in order, and the last of them in which each stage still
# has work to do (terminate has work in every state). A stage message that finds its attempt's
# job further along is a duplicate: a redelivered copy, or the twin a worker leaves when it is
# killed after publishing a poll's retry and before acknowledging the poll.
SUCCESS_PATH = (
    JobState.QUEUED,
    JobState.PROVISIONING,
    JobState.BOOTING,
    JobState.VERIFYING,
    JobState.BOOTSTRAPPING,
    JobState.TRAINING,
    JobState.COLLECTING,
    JobState.TERMINATING,
    JobState.SUCCEEDED,
)
WORKS_UNTIL: dict[str, JobState] = {
    "provision": JobState.PROVISIONING,
    "await_ready": JobState.BOOTING,
    "verify_gpu": JobState.VERIFYING,
    "bootstrap": JobState.BOOTSTRAPPING,
    "supervise_training": JobState.TRAINING,
    "collect": JobState.COLLECTING,
}


class JobRef(BaseModel):
    """What every stage message carries: ids only, the state lives in Redis."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    attempt: int
    sweep_id: str

    def message(self) -> dict[str, Any]:
        return self.model_dump()

    def next_attempt(self) -> JobRef:
        return self.model_copy(update={"attempt": self.attempt + 1})


def job_is_past(stage: str, state: JobState) -> bool:
    """The job, in `state`, is past `stage`: the stage's work for this attempt is done."""
    last = WORKS_UNTIL.get(stage)
    if last is None or state not in SUCCESS_PATH:
        return False
    return SUCCESS_PATH.index(state) > SUCCESS_PATH.index(last)


def stage_task_name(stage: str) -> str:
    return f"saefleet.stage.{stage}"


def stage_chain(
    ref: JobRef, first: str = STAGES[0], last: str = STAGES[-1], countdown: float | None = None
) -> Signature:
    """`first` -> ... -> `last` for `ref`'s attempt; the first stage gets `ref` as argument,
    each later one the result of the one before it."""
    names = STAGES[STAGES.index(first) : STAGES.index(last) + 1]
    if not names:
        raise ValueError(f"no stages from {first} to {last}")
    head = app.signature(stage_task_name(names[0]), args=(ref.message(),))
    if countdown:
        head = head.set(countdown=countdown)
    return chain(head, *(app.signature(stage_task_name(n)) for n in names[1:]))
