"""The queue core's errors: one base, `QueueError`, whose `retryable` class attribute says
whether the same call may succeed if made again. The state store's errors are defined here;
the others next to what raises them.

QueueError                 retryable = False for every error below
├── NotFoundError          no sweep, job, attempt or instance with that id
├── StaleAttempt           the caller's attempt is not the job's current one: it must do nothing
├── IllegalTransition      the transition table has no such move from the job's current state
├── QueueDrained           (queue_app.admission) new work is refused while the queue is drained
└── ProcessError           (queue_app.processes) a process did not start, listen or answer

Redis's own exceptions stay redis's: the store retries a lost connection itself, and a stage
that still sees one hands its message back to the broker (jobs.stage_base).
"""

from __future__ import annotations

from typing import ClassVar


class QueueError(Exception):
    """Base of the queue core's errors."""

    retryable: ClassVar[bool] = False
    """Whether making the same call again may succeed."""


class NotFoundError(QueueError):
    """No record of `kind` with id `ident`."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")
        self.kind, self.ident = kind, ident


class StaleAttempt(QueueError):
    """The caller's attempt is not the job's current attempt: it must do nothing."""

    def __init__(self, job_id: str, attempt: int, current: int) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} is stale (current attempt {current})")
        self.job_id, self.attempt, self.current = job_id, attempt, current


class IllegalTransition(QueueError):
    """The job is in a state from which the transition table does not lead to `target`."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}")
        self.job_id, self.current, self.target = job_id, current, target
