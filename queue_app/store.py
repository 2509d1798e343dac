"""The store: typed access to the records in Redis (`queue_app.records`) under their key
names, the segment protocol between the supervisor and the GPU-side worker, and leases
(`queue_app.connection` opens one). Every status change is handed to the state
machine's compare-and-set (`queue_app.statemachine`).

Key layout (prefix `sf:`):
    sf:sweeps                    zset   sweep ids by creation time
    sf:sweep:{sweep}             hash   SweepRecord
    sf:sweep:{sweep}:jobs        list   job ids in grid order
    sf:jobs                      zset   job ids by creation time
    sf:job:{job}                 hash   JobRecord (state, attempt, ...); a pack job's moves are
                                        repeated on its members (queue_app.pack_mirror)
    sf:job:{job}:attempt:{a}     hash   AttemptRecord (per-attempt status: instance, segments)
    sf:job:{job}:events          list   JSON transition history
    sf:instances                 zset   instance ids by launch time
    sf:instances:live            set    instances not yet confirmed terminated
    sf:instance:{id}             hash   InstanceRecord
    sf:lease:{name}              string a lease's lock
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import redis

from queue_app.errors import NotFoundError, StaleAttempt
from queue_app.keys import (
    INSTANCES,
    JOBS,
    LIVE_INSTANCES,
    PREFIX,
    SWEEPS,
    attempt_key,
    events_key,
    instance_key,
    job_key,
    sweep_jobs_key,
    sweep_key,
)
from queue_app.leases import lease
from queue_app.pack_mirror import is_pack_id, mirror_begin_attempt, mirror_transition
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord, Record, SweepRecord
from queue_app.statemachine import (
    FencedCAS,
    HandoffStatus,
    InstanceState,
    InstanceStateCAS,
    JobState,
    JobStateCAS,
    SegmentStatus,
    encode_fields,
)

R = TypeVar("R", bound=Record)


class Store:
    """Typed access to the records; the only writer of job states."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._job_cas = JobStateCAS(client)
        self._fenced_cas = FencedCAS(client)
        self._instance_cas = InstanceStateCAS(client)

    # ---- creation ----------------------------------------------------------------------------

    def create_sweep(
        self, sweep: SweepRecord, jobs: Iterable[JobRecord], packs: Iterable[JobRecord] = ()
    ) -> None:
        """Write a sweep, all its jobs and its pack jobs in one transaction (all or nothing)."""
        pack_ids = {pack.job_id for pack in packs}
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(sweep_key(sweep.sweep_id), mapping=sweep.to_hash())
            pipe.zadd(SWEEPS, {sweep.sweep_id: sweep.created_at})
            for job in [*jobs, *packs]:
                pipe.hset(job_key(job.job_id), mapping=job.to_hash())
                pipe.zadd(JOBS, {job.job_id: job.created_at})
                if job.job_id not in pack_ids:
                    pipe.rpush(sweep_jobs_key(sweep.sweep_id), job.job_id)
                event = {"ts": job.created_at, "attempt": job.attempt, "to": str(job.state)}
                pipe.rpush(events_key(job.job_id), json.dumps(event))
            pipe.execute()

    def delete_sweep(self, sweep_id: str) -> None:
        """Remove a sweep and its jobs (used to roll back a submit whose send failed)."""
        job_ids = self.r.lrange(sweep_jobs_key(sweep_id), 0, -1)
        job_ids += json.loads(self.r.hget(sweep_key(sweep_id), "pack_ids") or "[]")
        with self.r.pipeline(transaction=True) as pipe:
            for job_id in job_ids:
                pipe.delete(job_key(job_id), events_key(job_id), attempt_key(job_id, 1))
                pipe.zrem(JOBS, job_id)
            pipe.delete(sweep_key(sweep_id), sweep_jobs_key(sweep_id))
            pipe.zrem(SWEEPS, sweep_id)
            pipe.execute()

    # ---- reads ---------------------------------------------------------------------------------

    def sweep(self, sweep_id: str) -> SweepRecord:
        return self._read_one(SweepRecord, sweep_key(sweep_id), "sweep", sweep_id)

    def job(self, job_id: str) -> JobRecord:
        return self._read_one(JobRecord, job_key(job_id), "job", job_id)

    def jobs(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """Several jobs in one round trip (missing ones are skipped)."""
        return self._read_many(JobRecord, [job_key(job_id) for job_id in job_ids])

    def sweep_jobs(self, sweep_id: str) -> list[JobRecord]:
        return self.jobs(self.r.lrange(sweep_jobs_key(sweep_id), 0, -1))

    def sweep_ids(self, limit: int = 100) -> list[str]:
        return list(self.r.zrevrange(SWEEPS, 0, limit - 1))

    def job_ids(self, limit: int = 1000) -> list[str]:
        return list(self.r.zrevrange(JOBS, 0, limit - 1))

    def attempt(self, job_id: str, attempt: int) -> AttemptRecord:
        key = attempt_key(job_id, attempt)
        return self._read_one(AttemptRecord, key, "attempt", f"{job_id}/{attempt}")

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        current = int(self.r.hget(job_key(job_id), "attempt") or 0)
        return self._read_many(
            AttemptRecord, [attempt_key(job_id, a) for a in range(1, current + 1)]
        )

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(events_key(job_id), 0, -1)]

    def instance(self, instance_id: str) -> InstanceRecord:
        return self._read_one(InstanceRecord, instance_key(instance_id), "instance", instance_id)

    def instances(self, live_only: bool = False) -> list[InstanceRecord]:
        ids = self.r.smembers(LIVE_INSTANCES) if live_only else self.r.zrange(INSTANCES, 0, -1)
        return self._read_many(InstanceRecord, [instance_key(iid) for iid in sorted(ids)])

    def _read_one(self, model: type[R], key: str, kind: str, ident: str) -> R:
        raw = self.r.hgetall(key)
        if not raw:
            raise NotFoundError(kind, ident)
        return model.from_hash(raw)

    def _read_many(self, model: type[R], keys: list[str]) -> list[R]:
        """The records at `keys` in one round trip (missing ones are skipped)."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return [model.from_hash(raw) for raw in pipe.execute() if raw]

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
        keys = (job_key(job_id), events_key(job_id))
        previous = self._job_cas(
            keys, job_id, attempt, target, reason=reason, allow_same=allow_same, fields=fields
        )
        if is_pack_id(job_id):
            mirror_transition(self, job_id, attempt, target, reason, fields)
        return previous

    def begin_attempt(self, job_id: str, new_attempt: int, **fields: Any) -> None:
        """PREEMPTED or PAUSED (attempt n-1) -> PROVISIONING (attempt n), creating attempt n's
        record in the same step; a repeat is a no-op."""
        keys = (job_key(job_id), events_key(job_id), attempt_key(job_id, new_attempt))
        self._job_cas(
            keys,
            job_id,
            new_attempt - 1,
            JobState.PROVISIONING,
            new_attempt=new_attempt,
            fields=fields,
        )
        if is_pack_id(job_id):
            mirror_begin_attempt(self, job_id, new_attempt, fields)

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

    def _fenced(self, job_id: str, attempt: int, key: str, fields: Mapping[str, Any]) -> None:
        """Write `fields` to `key` if `attempt` is live (StaleAttempt when it is not)."""
        for name in ("state", "attempt"):
            if name in fields and key == job_key(job_id):
                raise ValueError(f"{name} changes only through transition()")
        self._fenced_cas((job_key(job_id), key), job_id, attempt, fields)

    # ---- the segment protocol (supervise_training <-> train_segment) ---------------------------

    def claim_segment(self, job_id: str, attempt: int, segment: int) -> bool:
        """Mark segment `segment` as sent; True when it may be (re)sent.

        Segment n follows a done segment n-1; a segment still "sent" (never started) may be
        sent again, because its message may have been lost with a crashed supervisor. A resend
        keeps the first send's time: sending again is no sign that the instance works."""
        sent = (segment, SegmentStatus.SENT)
        if self._move_segment(job_id, attempt, sent, sent, segment_resent_at=time.time()):
            return True
        previous = (segment - 1, SegmentStatus.DONE if segment > 1 else None)
        return self._move_segment(
            job_id,
            attempt,
            previous,
            sent,
            segment_sent_at=time.time(),
            segment_resent_at=None,
            segment_done=False,
            segment_stopped=False,
        )

    def start_segment(self, job_id: str, attempt: int, segment: int, runner: str) -> bool:
        """sent -> running by `runner` (unique to one delivery); False for a duplicate or late
        message (it must do nothing). redis-py sends a command again when the connection drops
        before the reply (a tunnel re-made under the GPU-side worker): a start that went
        through is found by its runner, not taken for a duplicate (nobody would run it)."""
        running = (segment, SegmentStatus.RUNNING)
        if self._move_segment(
            job_id,
            attempt,
            (segment, SegmentStatus.SENT),
            running,
            segment_started_at=time.time(),
            segment_runner=runner,
        ):
            return True
        now = self.attempt(job_id, attempt)
        return (now.segment, now.segment_status, now.segment_runner) == (*running, runner)

    def finish_segment(
        self, job_id: str, attempt: int, segment: int, status: SegmentStatus, **fields: Any
    ) -> bool:
        """running -> done | failed, with the segment's outcome fields."""
        return self._move_segment(
            job_id,
            attempt,
            (segment, SegmentStatus.RUNNING),
            (segment, status),
            segment_finished_at=time.time(),
            **fields,
        )

    def _move_segment(
        self,
        job_id: str,
        attempt: int,
        current: tuple[int, SegmentStatus | None],
        target: tuple[int, SegmentStatus],
        **fields: Any,
    ) -> bool:
        keys = (job_key(job_id), attempt_key(job_id, attempt))
        return self._fenced_cas.move_segment(keys, job_id, attempt, current, target, fields)

    def move_handoff(
        self,
        job_id: str,
        attempt: int,
        current: HandoffStatus | None,
        target: HandoffStatus,
        **fields: Any,
    ) -> bool:
        """Move the attempt's notice hand-off from `current` to `target` (False: it is not at
        `current`); allowed while the attempt is live or its hand-off open."""
        keys = (job_key(job_id), attempt_key(job_id, attempt))
        return self._fenced_cas.move_handoff(keys, job_id, attempt, current, target, fields)

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

    def mark_instance_terminating(self, instance_id: str) -> bool:
        """We asked the provider to terminate it; False (and nothing changes) once it is
        confirmed gone."""
        return self._instance_cas(
            (instance_key(instance_id), LIVE_INSTANCES),
            instance_id,
            InstanceState.TERMINATING,
            ("terminate_requested_at", time.time()),
        )

    def mark_instance_terminated(self, instance_id: str, at: float | None = None) -> None:
        """Confirmed gone at the provider: stop the cost clock (first call wins)."""
        self._instance_cas(
            (instance_key(instance_id), LIVE_INSTANCES),
            instance_id,
            InstanceState.TERMINATED,
            ("terminated_at", at if at is not None else time.time()),
        )

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

    def lease(
        self, name: str, ttl_s: float, blocking: bool = False, renew: bool = False
    ) -> contextlib.AbstractContextManager[bool]:
        """The lease `name` (see `queue_app.leases.lease`)."""
        return lease(self.r, f"{PREFIX}:lease:{name}", ttl_s, blocking, renew)
