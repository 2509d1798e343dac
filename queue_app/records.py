"""The records kept in Redis: a sweep, its jobs, each job's attempts, and the instances they ran
on. Each is a pydantic model stored as one flat Redis hash (text fields raw, others as JSON);
`queue_app.store` reads and writes them, `queue_app.statemachine` moves their statuses.

Fields only ever get added with a default, so that records written before still read.
"""

from __future__ import annotations

import functools
import json
import time
import types
import typing
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from queue_app.jobspec import JobSpec
from queue_app.statemachine import (
    TERMINAL_STATES,
    HandoffStatus,
    InstanceState,
    JobState,
    SegmentStatus,
)


class Record(BaseModel):
    """A flat record stored as a Redis hash; non-string fields are JSON-encoded."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            out[name] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> Self:
        text = _text_fields(cls)
        data: dict[str, Any] = {}
        for name, value in raw.items():
            if name in cls.model_fields:
                data[name] = value if name in text else json.loads(value)
        return cls.model_validate(data)


@functools.cache
def _text_fields(record: type[Record]) -> frozenset[str]:
    """The fields of `record` stored raw (worked out once per class: a tick reads thousands)."""
    return frozenset(n for n, f in record.model_fields.items() if _is_text(f.annotation))


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text (stored raw) rather than JSON."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    return any(isinstance(o, type) and issubclass(o, str) for o in options)


class SweepRecord(Record):
    """One submitted sweep file."""

    sweep_id: str
    """`sw` + 8 hex digits."""
    name: str
    """The sweep file's `name`."""
    created_at: float
    """When it was submitted (Unix time)."""
    spec: dict[str, Any]
    """The validated sweep file (`jobs.spec.SweepSpec` as JSON)."""
    job_ids: list[str]
    """Its jobs, in grid order."""
    budget_usd: float | None = None
    """Spend limit for the whole sweep, if any."""
    finished_at: float | None = None
    """When the sweep's finalizer first ran."""
    finalize_runs: int = 0
    """How many times the finalizer ran (more than once: a redelivery)."""
    summary_path: str | None = None
    """Where the finalizer wrote summary.json."""
    pack_ids: list[str] = []
    """Its packs of two or more jobs (pack jobs, not in `job_ids`; see `JobRecord.members`)."""


class JobRecord(Record):
    """One grid point of a sweep, across all its attempts."""

    job_id: str
    """`{sweep_id}-{index:04d}`."""
    sweep_id: str
    """The sweep it belongs to."""
    index: int
    """Its position in the sweep's grid order."""
    name: str
    """The grid point as `path=value,...`."""
    state: JobState
    """Where it is in its life (moved only by the state machine)."""
    attempt: int
    """The live attempt, from 1; a task carrying another attempt is stale."""
    spec: dict[str, Any]
    """The stored form of `job_spec` (JSON of the fields a user set); read it as `job_spec`."""
    created_at: float
    """When it was submitted."""
    updated_at: float
    """When its state last changed."""
    reason: str | None = None
    """Why it failed, was preempted, cancelled or capped."""
    instance_id: str | None = None
    """The live attempt's instance."""
    resume_from: str | None = None
    """The name of the checkpoint the live attempt resumes from."""
    latest_checkpoint: str | None = None
    """The name of the newest checkpoint pulled home."""
    preemptions: int = 0
    """How many times an instance was lost under it."""
    progress: dict[str, Any] = {}
    """The trainer's last progress report (step, tokens, loss, ...)."""
    metrics: dict[str, Any] = {}
    """The finished run's metrics (fvu, l0, ...)."""
    artifacts_dir: str | None = None
    """Where its collected artifacts are."""
    stop_requested: str | None = None
    """Why the run was asked to stop early (cost cap, cancel), if it was."""
    pack_id: str | None = None
    """The pack job that trains this job with others on one instance (None: its own chain)."""
    members: list[str] = []
    """A pack job's members, in grid order (empty for every other job)."""
    split_from: str | None = None
    """The pack job this pack job split from when it ran out of memory (jobs.pack_split)."""
    split_at: int = 0
    """The attempt of `split_from` that split (this job's first attempt is the next one)."""
    micro_batch_halvings: int = 0
    """How often running out of GPU memory halved the micro-batch on the current GPU size:
    every later segment and attempt trains with train.grad_accum_steps x 2**this (the same
    effective batch). A move to a larger GPU type sets it back to 0 (jobs.oom)."""
    lm_batch_halvings: int = 0
    """How often running out of GPU memory in the LM forward halved the forward's batch
    (`train.lm_batch_size`, at least 1 context) on the current GPU size; kept and reset like
    `micro_batch_halvings`."""
    gpu_memory_above_gb: float | None = None
    """Set when training ran out of memory at its smallest micro-batch on a type with this
    much GPU memory: later attempts launch only on types with more (None: any type)."""
    memory_moves: int = 0
    """Attempts ended, out of memory at the smallest micro-batch, to move to a larger GPU type
    or to split a pack (they do not count against max_attempts; jobs.oom)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @cached_property
    def job_spec(self) -> JobSpec:
        """What the job runs with, typed (pydantic's ValidationError for a corrupt record)."""
        return JobSpec.from_stored(self.index, self.name, self.spec)


class AttemptRecord(Record):
    """One attempt of a job: one instance, trained segment by segment."""

    job_id: str
    """The job it belongs to."""
    attempt: int
    """Its number, from 1."""
    started_at: float
    """When it began."""
    ended_at: float | None = None
    """When it ended (first end wins)."""
    end_reason: str | None = None
    """Why it ended."""
    instance_id: str | None = None
    """The instance it runs on, once launched."""
    resume_from: str | None = None
    """The name of the checkpoint it resumes from."""
    capacity: str | None = None
    """spot or on_demand."""
    waiting_for: str | None = None
    """What it waits for right now ("" when nothing)."""
    waiting_since: float | None = None
    """Since when it has waited for that."""
    gpu: str | None = None
    """What GPU verification found."""
    bootstrap_phase: str | None = None
    """How far bootstrap got (uploaded, started)."""
    worker_started_at: float | None = None
    """When its GPU-side worker started."""
    segment: int = 0
    """The current training segment, from 1 (0: none sent yet)."""
    segment_sent_at: float | None = None
    """When the current segment's message was first sent."""
    segment_resent_at: float | None = None
    """When it was last sent again (its message taken by no worker; see jobs.supervise)."""
    segment_started_at: float | None = None
    """When a worker started it."""
    segment_runner: str | None = None
    """The delivery of its message that runs it (a token train_segment draws)."""
    segment_finished_at: float | None = None
    """When it ended."""
    segment_status: SegmentStatus | None = None
    """Where the current segment is (moved only by the state machine)."""
    segment_error: str | None = None
    """Why the segment failed."""
    segment_checkpoint: str | None = None
    """The checkpoint the segment ended with (relative to the run directory)."""
    segment_done: bool = False
    """The run finished in this segment."""
    segment_stopped: bool = False
    """The run stopped on request in this segment."""
    pulled_segment: int = 0
    """The last segment whose checkpoint is kept in the store (uploaded by the instance and
    verified, or pulled over SFTP)."""
    segment_out_of_memory: bool = False
    """The segment failed out of GPU memory at the smallest micro-batch (sae's OutOfMemory):
    the next attempt runs on a larger GPU type (jobs.oom)."""
    out_of_memory: list[str] = []
    """What running out of GPU memory did in this attempt, one line each ("out of memory at
    step 40; micro-batch 64 -> 32 tokens", or the move to a larger type)."""
    member_outcomes: dict[str, dict[str, Any]] = {}
    """A pack's segment: each member's outcome (`checkpoint`, `done`, `error`), by job id."""
    handoff: HandoffStatus | None = None
    """Set when this attempt was noticed: the hand-off of the checkpoint written on notice to
    the next attempt (moved only by the state machine; jobs.notice_handoff)."""
    handoff_opened_at: float | None = None
    """When the hand-off opened (the next attempt waits for it at most a bounded time)."""
    handoff_checkpoint: str | None = None
    """The checkpoint handed off (KEPT), by name."""
    handoff_note: str | None = None
    """Why nothing was handed off (LOST)."""
    terminate_started_at: float | None = None
    """When the terminate stage first ran for it (its confirm timeout counts from here)."""


class InstanceRecord(Record):
    """One instance we launched, and what it cost."""

    instance_id: str
    """The provider's id."""
    provider: str
    """The provider's name (local, lambda)."""
    name: str
    """The name we gave it (`sf-{job}-{attempt}`)."""
    job_id: str
    """The job it was launched for."""
    sweep_id: str
    """That job's sweep."""
    attempt: int
    """That job's attempt."""
    state: InstanceState
    """Our view of it (moved only by the state machine)."""
    launched_at: float
    """Our launch timestamp: the cost clock starts here."""
    price_per_hour: float
    """What it costs per hour, in USD."""
    instance_type: str | None = None
    """The provider's instance type."""
    region: str | None = None
    """Where it runs."""
    capacity: str | None = None
    """spot or on_demand."""
    host: str | None = None
    """Its SSH address."""
    ssh_port: int | None = None
    """Its SSH port."""
    ssh_user: str | None = None
    """Its SSH user."""
    workdir: str | None = None
    """The job's directory on it."""
    broker_port: int | None = None
    """The instance-side port of its SSH tunnel to our Redis."""
    terminate_requested_at: float | None = None
    """When we first asked the provider to terminate it."""
    terminated_at: float | None = None
    """When it was confirmed gone: the cost clock stops here."""
    members: list[str] = []
    """A pack's instance: the members training on it at launch, who share its cost."""
    member_left_at: dict[str, float] = {}
    """A pack's instance: when each member that left the pack early stopped training on it."""

    def running_hours(self, now: float | None = None) -> float:
        """From our own launch timestamp to our terminate timestamp (or now)."""
        end = self.terminated_at or (now if now is not None else time.time())
        return max(0.0, end - self.launched_at) / 3600.0

    def cost_usd(self, now: float | None = None) -> float:
        """Price x running time."""
        return self.running_hours(now) * self.price_per_hour
