"""Job, attempt, instance and sweep records in Redis, and the one function that moves a job.

Every job-state change goes through `Store.transition`, which checks the transition table and
does a compare-and-set (a Lua script) on the job's state *and* attempt. A task that carries an
attempt which is no longer the job's attempt gets `StaleAttempt`: that fence is what makes
resume safe against late or redelivered tasks.

Key layout (prefix `sf:`):
    sf:sweeps                    zset   sweep ids by creation time
    sf:sweep:{sweep}             hash   SweepRecord
    sf:sweep:{sweep}:jobs        list   job ids in grid order
    sf:jobs                      zset   job ids by creation time
    sf:job:{job}                 hash   JobRecord (state, attempt, ...)
    sf:job:{job}:attempt:{a}     hash   AttemptRecord (per-attempt status: instance, segments)
    sf:job:{job}:events          list   JSON transition history
    sf:instances                 zset   instance ids by launch time
    sf:instances:live            set    instances not yet confirmed terminated
    sf:instance:{id}             hash   InstanceRecord
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, ClassVar, Self

import redis
from pydantic import BaseModel, ConfigDict
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from queue_app.settings import Settings, get_settings

PREFIX = "sf"


class JobState(StrEnum):
    QUEUED = "QUEUED"
    PROVISIONING = "PROVISIONING"
    BOOTING = "BOOTING"
    VERIFYING = "VERIFYING"
    BOOTSTRAPPING = "BOOTSTRAPPING"
    TRAINING = "TRAINING"
    COLLECTING = "COLLECTING"
    TERMINATING = "TERMINATING"
    PREEMPTED = "PREEMPTED"
    PAUSED = "PAUSED"
    """Drained (`queue drain`): its newest checkpoint pulled, its instance terminated, it waits
    at no cost; `queue drain --undo` resumes it as attempt+1 from that checkpoint. Not a
    preemption: it never counts against max_preemptions or max_attempts."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    COST_CAPPED = "COST_CAPPED"


S = JobState
TERMINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.COST_CAPPED})
# States in which the job holds (or is getting) an instance.
INSTANCE_STATES = frozenset({S.PROVISIONING, S.BOOTING, S.VERIFYING, S.BOOTSTRAPPING, S.TRAINING})
_EXITS = {S.FAILED, S.CANCELLED, S.COST_CAPPED}

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.PROVISIONING, S.FAILED, S.CANCELLED}),
    S.PROVISIONING: frozenset({S.BOOTING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.BOOTING: frozenset({S.VERIFYING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.VERIFYING: frozenset({S.BOOTSTRAPPING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.BOOTSTRAPPING: frozenset({S.TRAINING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.TRAINING: frozenset({S.COLLECTING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    # A lost instance while collecting is a preemption: the next attempt resumes from the final
    # checkpoint, finishes at once and is collected.
    S.COLLECTING: frozenset({S.TERMINATING, S.PREEMPTED, S.FAILED, S.CANCELLED}),
    S.TERMINATING: frozenset({S.SUCCEEDED, S.FAILED}),
    # PREEMPTED -> PROVISIONING starts the next attempt (see Store.begin_attempt).
    S.PREEMPTED: frozenset({S.PROVISIONING, *_EXITS}),
    # PAUSED -> PROVISIONING resumes it after a drain, like PREEMPTED (Store.begin_attempt).
    S.PAUSED: frozenset({S.PROVISIONING, *_EXITS}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.COST_CAPPED: frozenset(),
}


class InstanceState(StrEnum):
    """Our view of an instance (the provider's own status is `jobs.providers.InstanceStatus`)."""

    LAUNCHED = "LAUNCHED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


class StateError(Exception):
    """Base of the state-store errors."""


class NotFoundError(StateError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")
        self.kind, self.ident = kind, ident


class StaleAttempt(StateError):
    """The caller's attempt is not the job's current attempt: it must do nothing."""

    def __init__(self, job_id: str, attempt: int, current: int) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} is stale (current attempt {current})")
        self.job_id, self.attempt, self.current = job_id, attempt, current


class IllegalTransition(StateError):
    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id}: illegal transition {current} -> {target}")
        self.job_id, self.current, self.target = job_id, current, target


# ---- records ----------------------------------------------------------------------------------


class Record(BaseModel):
    """A flat record stored as a Redis hash; non-string fields are JSON-encoded."""

    model_config = ConfigDict(extra="ignore")
    _plain: ClassVar[frozenset[str]] = frozenset()

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            out[name] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> Self:
        data: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name in raw:
                value = raw[name]
                data[name] = value if _is_text(field.annotation) else json.loads(value)
        return cls.model_validate(data)


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text (stored raw) rather than JSON."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    return any(isinstance(o, type) and issubclass(o, str) for o in options)


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Encode partial-update values the way `Record.to_hash` does."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


class SweepRecord(Record):
    sweep_id: str
    name: str
    created_at: float
    spec: dict[str, Any]
    job_ids: list[str]
    budget_usd: float | None = None
    finished_at: float | None = None
    finalize_runs: int = 0
    summary_path: str | None = None


class JobRecord(Record):
    job_id: str
    sweep_id: str
    index: int
    name: str
    state: JobState
    attempt: int
    spec: dict[str, Any]
    created_at: float
    updated_at: float
    reason: str | None = None
    instance_id: str | None = None
    resume_from: str | None = None
    latest_checkpoint: str | None = None
    preemptions: int = 0
    progress: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    artifacts_dir: str | None = None
    stop_requested: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class AttemptRecord(Record):
    job_id: str
    attempt: int
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    instance_id: str | None = None
    resume_from: str | None = None
    capacity: str | None = None
    waiting_for: str | None = None
    waiting_since: float | None = None
    gpu: str | None = None
    bootstrap_phase: str | None = None
    worker_started_at: float | None = None
    segment: int = 0
    segment_sent_at: float | None = None
    segment_started_at: float | None = None
    segment_finished_at: float | None = None
    segment_status: str | None = None
    segment_error: str | None = None
    segment_checkpoint: str | None = None
    segment_done: bool = False
    segment_stopped: bool = False
    pulled_segment: int = 0
    terminate_started_at: float | None = None


class InstanceRecord(Record):
    instance_id: str
    provider: str
    name: str
    job_id: str
    sweep_id: str
    attempt: int
    state: InstanceState
    launched_at: float
    price_per_hour: float
    instance_type: str | None = None
    region: str | None = None
    capacity: str | None = None
    host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    workdir: str | None = None
    broker_port: int | None = None
    terminate_requested_at: float | None = None
    terminated_at: float | None = None

    def running_hours(self, now: float | None = None) -> float:
        """From our own launch timestamp to our terminate timestamp (or now)."""
        end = self.terminated_at or (now if now is not None else time.time())
        return max(0.0, end - self.launched_at) / 3600.0

    def cost_usd(self, now: float | None = None) -> float:
        """Price x running time."""
        return self.running_hours(now) * self.price_per_hour

    @property
    def train_queue(self) -> str:
        return f"train.{self.instance_id}"


# ---- keys ---------------------------------------------------------------------------------------


def sweep_key(sweep_id: str) -> str:
    return f"{PREFIX}:sweep:{sweep_id}"


def sweep_jobs_key(sweep_id: str) -> str:
    return f"{PREFIX}:sweep:{sweep_id}:jobs"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def attempt_key(job_id: str, attempt: int) -> str:
    return f"{PREFIX}:job:{job_id}:attempt:{attempt}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def instance_key(instance_id: str) -> str:
    return f"{PREFIX}:instance:{instance_id}"


SWEEPS = f"{PREFIX}:sweeps"
JOBS = f"{PREFIX}:jobs"
INSTANCES = f"{PREFIX}:instances"
LIVE_INSTANCES = f"{PREFIX}:instances:live"

# ---- Lua: compare-and-set of (state, attempt) ---------------------------------------------------

# KEYS: job, events. ARGV: attempt, target, allowed_from (JSON list), now, new_attempt ("" for
# none), extra fields (JSON object), reason ("" for none), allow_same ("1"/"0").
# Returns {"OK", previous_state} | {"SAME", state} | {"STALE", attempt} | {"ILLEGAL", state} |
# {"MISSING", ""}.
_TRANSITION_LUA = """
local cur_attempt = redis.call('HGET', KEYS[1], 'attempt')
if not cur_attempt then return {'MISSING', ''} end
local cur = redis.call('HGET', KEYS[1], 'state')
local attempt = ARGV[1]
local new_attempt = ARGV[5]
if cur_attempt ~= attempt then
  if new_attempt ~= '' and cur_attempt == new_attempt and cur == ARGV[2] then
    return {'SAME', cur}
  end
  return {'STALE', cur_attempt}
end
if cur == ARGV[2] and ARGV[8] == '1' then return {'SAME', cur} end
local allowed = cjson.decode(ARGV[3])
local ok = false
for _, s in ipairs(allowed) do if s == cur then ok = true end end
if not ok then return {'ILLEGAL', cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[4])
if new_attempt ~= '' then redis.call('HSET', KEYS[1], 'attempt', new_attempt) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[7]) end
local extra = cjson.decode(ARGV[6])
for k, v in pairs(extra) do redis.call('HSET', KEYS[1], k, v) end
local event = {ts = tonumber(ARGV[4]), attempt = tonumber(new_attempt ~= '' and new_attempt
  or attempt), from = cur, to = ARGV[2], reason = ARGV[7]}
redis.call('RPUSH', KEYS[2], cjson.encode(event))
return {'OK', cur}
"""

# KEYS: job, target hash. ARGV: attempt, conditions (JSON object field -> expected value, "" for
# absent), fields (JSON object). Writes only for the live attempt and when every condition holds.
_FENCED_CAS_LUA = """
local cur_attempt = redis.call('HGET', KEYS[1], 'attempt')
if not cur_attempt then return {'MISSING', ''} end
if cur_attempt ~= ARGV[1] then return {'STALE', cur_attempt} end
local conditions = cjson.decode(ARGV[2])
for k, expected in pairs(conditions) do
  local v = redis.call('HGET', KEYS[2], k) or ''
  if v ~= expected then return {'MISMATCH', k} end
end
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
return {'OK', ''}
"""


# How long a lost Redis connection is retried before a command fails: long-running services
# ride out Redis restarting and an SSH tunnel reconnecting under a GPU-side worker (without it a
# training segment died with the tunnel); the CLI says at once that Redis is unreachable.
SERVICE_RETRY_S = 30.0
CLI_RETRY_S = 2.0
CLI_SERVICE_NAME: str = Settings.model_fields["service_name"].default


def connect(url: str, retry_s: float = 0.0) -> Store:
    """A Store on a new connection pool to `url`; a lost connection is retried with backoff
    for about `retry_s` seconds."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        retry_on_timeout=True,
        retry=_retry_policy(retry_s),
        health_check_interval=10,
    )
    return Store(client)


def _retry_policy(budget_s: float) -> Retry:
    """Exponential backoff from 50 ms up to 2 s between tries, for about `budget_s`."""
    backoff = ExponentialBackoff(cap=2.0, base=0.05)
    retries, waited = 0, 0.0
    while waited < budget_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


@functools.cache
def _store_for(url: str, retry_s: float) -> Store:
    return connect(url, retry_s)


def get_store(settings: Settings | None = None) -> Store:
    """This process's Store for the configured Redis (one pool per URL)."""
    settings = settings or get_settings()
    retry_s = CLI_RETRY_S if settings.service_name == CLI_SERVICE_NAME else SERVICE_RETRY_S
    return _store_for(settings.broker_url, retry_s)


def _allowed_from(target: JobState) -> list[str]:
    return [str(s) for s, targets in TRANSITIONS.items() if target in targets]


class Store:
    """Typed access to the records; the only writer of job states."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._transition = client.register_script(_TRANSITION_LUA)
        self._fenced_cas = client.register_script(_FENCED_CAS_LUA)

    # ---- creation ----------------------------------------------------------------------------

    def create_sweep(self, sweep: SweepRecord, jobs: Iterable[JobRecord]) -> None:
        """Write a sweep and all its jobs in one transaction (all or nothing)."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(sweep_key(sweep.sweep_id), mapping=sweep.to_hash())
            pipe.zadd(SWEEPS, {sweep.sweep_id: sweep.created_at})
            for job in jobs:
                pipe.hset(job_key(job.job_id), mapping=job.to_hash())
                pipe.zadd(JOBS, {job.job_id: job.created_at})
                pipe.rpush(sweep_jobs_key(sweep.sweep_id), job.job_id)
                event = {"ts": job.created_at, "attempt": job.attempt, "to": str(job.state)}
                pipe.rpush(events_key(job.job_id), json.dumps(event))
            pipe.execute()

    def delete_sweep(self, sweep_id: str) -> None:
        """Remove a sweep and its jobs (used to roll back a submit whose send failed)."""
        job_ids = self.r.lrange(sweep_jobs_key(sweep_id), 0, -1)
        with self.r.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.delete(job_key(job_id), events_key(job_id), attempt_key(job_id, 1))
                pipe.zrem(JOBS, job_id)
            pipe.delete(sweep_key(sweep_id), sweep_jobs_key(sweep_id))
            pipe.zrem(SWEEPS, sweep_id)
            pipe.execute()

    # ---- reads ---------------------------------------------------------------------------------

    def sweep(self, sweep_id: str) -> SweepRecord:
        raw = self.r.hgetall(sweep_key(sweep_id))
        if not raw:
            raise NotFoundError("sweep", sweep_id)
        return SweepRecord.from_hash(raw)

    def job(self, job_id: str) -> JobRecord:
        raw = self.r.hgetall(job_key(job_id))
        if not raw:
            raise NotFoundError("job", job_id)
        return JobRecord.from_hash(raw)

    def jobs(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """Several jobs in one round trip (missing ones are skipped)."""
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            return [JobRecord.from_hash(raw) for raw in pipe.execute() if raw]

    def sweep_jobs(self, sweep_id: str) -> list[JobRecord]:
        return self.jobs(self.r.lrange(sweep_jobs_key(sweep_id), 0, -1))

    def sweep_ids(self, limit: int = 100) -> list[str]:
        return list(self.r.zrevrange(SWEEPS, 0, limit - 1))

    def job_ids(self, limit: int = 1000) -> list[str]:
        return list(self.r.zrevrange(JOBS, 0, limit - 1))

    def attempt(self, job_id: str, attempt: int) -> AttemptRecord:
        raw = self.r.hgetall(attempt_key(job_id, attempt))
        if not raw:
            raise NotFoundError("attempt", f"{job_id}/{attempt}")
        return AttemptRecord.from_hash(raw)

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        current = int(self.r.hget(job_key(job_id), "attempt") or 0)
        with self.r.pipeline(transaction=False) as pipe:
            for a in range(1, current + 1):
                pipe.hgetall(attempt_key(job_id, a))
            return [AttemptRecord.from_hash(raw) for raw in pipe.execute() if raw]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(events_key(job_id), 0, -1)]

    def instance(self, instance_id: str) -> InstanceRecord:
        raw = self.r.hgetall(instance_key(instance_id))
        if not raw:
            raise NotFoundError("instance", instance_id)
        return InstanceRecord.from_hash(raw)

    def instances(self, live_only: bool = False) -> list[InstanceRecord]:
        ids = self.r.smembers(LIVE_INSTANCES) if live_only else self.r.zrange(INSTANCES, 0, -1)
        with self.r.pipeline(transaction=False) as pipe:
            for iid in sorted(ids):
                pipe.hgetall(instance_key(iid))
            return [InstanceRecord.from_hash(raw) for raw in pipe.execute() if raw]

    # ---- the one transition function -----------------------------------------------------------

    def transition(
        self,
        job_id: str,
        attempt: int,
        target: JobState,
        *,
        reason: str | None = None,
        allow_same: bool = False,
        **fields: Any,
    ) -> JobState:
        """Move `job_id` to `target` if the table allows it and `attempt` is current.

        Returns the previous state. With `allow_same`, a job already in `target` is left as is
        (a redelivered task repeating its own transition). Raises StaleAttempt,
        IllegalTransition or NotFoundError.
        """
        return self._run_transition(job_id, attempt, target, "", reason, allow_same, fields)

    def begin_attempt(self, job_id: str, new_attempt: int, **fields: Any) -> None:
        """PREEMPTED (attempt n-1) -> PROVISIONING (attempt n); a repeat of it is a no-op."""
        self._run_transition(
            job_id, new_attempt - 1, S.PROVISIONING, str(new_attempt), None, False, fields
        )
        self._init_attempt(job_id, new_attempt)

    def _run_transition(
        self,
        job_id: str,
        attempt: int,
        target: JobState,
        new_attempt: str,
        reason: str | None,
        allow_same: bool,
        fields: Mapping[str, Any],
    ) -> JobState:
        outcome, value = self._transition(
            keys=[job_key(job_id), events_key(job_id)],
            args=[
                str(attempt),
                str(target),
                json.dumps(_allowed_from(target)),
                repr(time.time()),
                new_attempt,
                json.dumps(encode_fields(fields)),
                reason or "",
                "1" if allow_same else "0",
            ],
        )
        if outcome == "OK":
            return JobState(value)
        if outcome == "SAME":
            return JobState(value)
        if outcome == "STALE":
            raise StaleAttempt(job_id, attempt, int(value))
        if outcome == "ILLEGAL":
            raise IllegalTransition(job_id, value, str(target))
        raise NotFoundError("job", job_id)

    # ---- fenced writes (only for the live attempt) ----------------------------------------------

    def check_attempt(self, job_id: str, attempt: int) -> JobRecord:
        """The job record, or StaleAttempt when `attempt` is not the job's attempt."""
        job = self.job(job_id)
        if job.attempt != attempt:
            raise StaleAttempt(job_id, attempt, job.attempt)
        return job

    def update_job(self, job_id: str, attempt: int, **fields: Any) -> None:
        """Set non-state fields of the job, only while `attempt` is the live attempt."""
        self._fenced(job_id, attempt, job_key(job_id), fields)

    def update_attempt(self, job_id: str, attempt: int, **fields: Any) -> None:
        """Set fields of the attempt record, only while `attempt` is the live attempt."""
        self._fenced(job_id, attempt, attempt_key(job_id, attempt), fields)

    def set_waiting(self, job_id: str, attempt: int, what: str) -> float:
        """Record what the attempt waits for; returns since when it has been waiting."""
        key = attempt_key(job_id, attempt)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "waiting_since", json.dumps(time.time()))
            pipe.hset(key, "waiting_for", what)
            pipe.hget(key, "waiting_since")
            _, _, since = pipe.execute()
        return float(since)

    def clear_waiting(self, job_id: str, attempt: int) -> None:
        key = attempt_key(job_id, attempt)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(key, "waiting_since")
            pipe.hset(key, "waiting_for", "")
            pipe.execute()

    def end_attempt(self, job_id: str, attempt: int, reason: str) -> None:
        """Record when and why an attempt ended (the first call wins)."""
        key = attempt_key(job_id, attempt)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "ended_at", json.dumps(time.time()))
            pipe.hsetnx(key, "end_reason", reason)
            pipe.execute()

    def count_attempt_event(self, job_id: str, attempt: int, name: str) -> int:
        """Increment and return a per-attempt counter (e.g. transient errors of a stage)."""
        return int(self.r.hincrby(attempt_key(job_id, attempt), f"count:{name}", 1))

    def reset_attempt_counter(self, job_id: str, attempt: int, name: str) -> None:
        self.r.hdel(attempt_key(job_id, attempt), f"count:{name}")

    def _fenced(
        self,
        job_id: str,
        attempt: int,
        key: str,
        fields: Mapping[str, Any],
        conditions: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write `fields` to `key` if `attempt` is live and `conditions` hold; False on a
        condition mismatch, StaleAttempt when the attempt is not live."""
        for name in ("state", "attempt"):
            if name in fields and key == job_key(job_id):
                raise ValueError(f"{name} changes only through transition()")
        outcome, value = self._fenced_cas(
            keys=[job_key(job_id), key],
            args=[
                str(attempt),
                json.dumps(encode_fields(conditions or {})),
                json.dumps(encode_fields(fields)),
            ],
        )
        if outcome == "STALE":
            raise StaleAttempt(job_id, attempt, int(value))
        if outcome == "MISSING":
            raise NotFoundError("job", job_id)
        return bool(outcome == "OK")

    # ---- the segment protocol (supervise_training <-> train_segment) ---------------------------

    def claim_segment(self, job_id: str, attempt: int, segment: int) -> bool:
        """Mark segment `segment` as sent; True when it may be (re)sent.

        Segment n follows a done segment n-1; a segment still "sent" (never started) may be
        sent again, because its message may have been lost with a crashed supervisor."""
        key = attempt_key(job_id, attempt)
        sent = {"segment": segment, "segment_status": "sent"}
        if self._fenced(job_id, attempt, key, {"segment_sent_at": time.time()}, sent):
            return True
        previous = {"segment": segment - 1, "segment_status": "done" if segment > 1 else ""}
        fields = {
            **sent,
            "segment_sent_at": time.time(),
            "segment_done": False,
            "segment_stopped": False,
        }
        return self._fenced(job_id, attempt, key, fields, previous)

    def start_segment(self, job_id: str, attempt: int, segment: int) -> bool:
        """sent -> running; False for a duplicate or late message (it must do nothing)."""
        return self._fenced(
            job_id,
            attempt,
            attempt_key(job_id, attempt),
            {"segment_status": "running", "segment_started_at": time.time()},
            {"segment": segment, "segment_status": "sent"},
        )

    def finish_segment(
        self, job_id: str, attempt: int, segment: int, status: str, **fields: Any
    ) -> bool:
        """running -> done | failed, with the segment's outcome fields."""
        return self._fenced(
            job_id,
            attempt,
            attempt_key(job_id, attempt),
            {"segment_status": status, "segment_finished_at": time.time(), **fields},
            {"segment": segment, "segment_status": "running"},
        )

    def start_first_attempt(self, job_id: str) -> None:
        """Create attempt 1's record (idempotent)."""
        self._init_attempt(job_id, 1)

    def _init_attempt(self, job_id: str, attempt: int) -> None:
        key = attempt_key(job_id, attempt)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "started_at", json.dumps(time.time()))
            pipe.hsetnx(key, "segment", "0")
            pipe.hset(key, mapping={"job_id": job_id, "attempt": str(attempt)})
            pipe.execute()

    # ---- instances ------------------------------------------------------------------------------

    def register_instance(self, record: InstanceRecord) -> None:
        """Record a launched instance (idempotent: a repeat keeps the first launch time)."""
        key = instance_key(record.instance_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "launched_at", json.dumps(record.launched_at))
            fields = record.to_hash()
            fields.pop("launched_at")
            pipe.hset(key, mapping=fields)
            pipe.zadd(INSTANCES, {record.instance_id: record.launched_at}, nx=True)
            pipe.sadd(LIVE_INSTANCES, record.instance_id)
            pipe.execute()

    def update_instance(self, instance_id: str, **fields: Any) -> None:
        if "state" in fields:
            raise ValueError("instance state changes only through mark_instance_*()")
        self.r.hset(instance_key(instance_id), mapping=encode_fields(fields))

    def mark_instance_terminating(self, instance_id: str) -> None:
        key = instance_key(instance_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "terminate_requested_at", json.dumps(time.time()))
            pipe.hset(key, "state", str(InstanceState.TERMINATING))
            pipe.execute()

    def mark_instance_terminated(self, instance_id: str, at: float | None = None) -> None:
        """Confirmed gone at the provider: stop the cost clock (first call wins)."""
        key = instance_key(instance_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "terminated_at", json.dumps(at if at is not None else time.time()))
            pipe.hset(key, "state", str(InstanceState.TERMINATED))
            pipe.srem(LIVE_INSTANCES, instance_id)
            pipe.execute()

    # ---- sweeps ---------------------------------------------------------------------------------

    def finish_sweep(self, sweep_id: str, summary_path: str) -> int:
        """Mark a sweep finished; returns how many times its finalizer has run."""
        key = sweep_key(sweep_id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "finalize_runs", 1)
            pipe.hsetnx(key, "finished_at", json.dumps(time.time()))
            pipe.hset(key, "summary_path", summary_path)
            runs, _, _ = pipe.execute()
        return int(runs)

    # ---- leases ---------------------------------------------------------------------------------

    @contextmanager
    def lease(
        self, name: str, ttl_s: float, blocking: bool = False, renew: bool = False
    ) -> Iterator[bool]:
        """A Redis lock with expiry; yields whether it was acquired. With `renew`, a thread
        extends it every third of `ttl_s` while it is held: a long holder keeps it, and one that
        is killed loses it within `ttl_s`."""
        lock = self.r.lock(  # its token is shared with the renewing thread
            f"{PREFIX}:lease:{name}", timeout=ttl_s, blocking=blocking, thread_local=False
        )
        acquired = bool(lock.acquire(blocking=blocking))
        released = threading.Event()
        if acquired and renew:
            threading.Thread(
                target=_keep_extending, args=(lock, ttl_s, released), daemon=True
            ).start()
        try:
            yield acquired
        finally:
            released.set()
            if acquired:
                # It may have expired while held; then the next holder already has it.
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()


def _keep_extending(lock: redis.lock.Lock, ttl_s: float, released: threading.Event) -> None:
    """Reset the lease's expiry to `ttl_s` every third of it until it is released or lost."""
    while not released.wait(ttl_s / 3):
        try:
            lock.extend(ttl_s, replace_ttl=True)
        except redis.exceptions.LockError:
            return  # it expired and someone else may hold it now
        except redis.exceptions.RedisError:
            continue  # Redis unreachable for now: try again at the next third
