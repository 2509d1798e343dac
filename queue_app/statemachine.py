"""The state machine: every status a job, an instance and a training segment can be in, the
transition table of each, and the compare-and-set (a Lua script) that moves each one.

Nothing else writes a status. A job moves only through `JobStateCAS`, which checks the job's
state *and* attempt: a task that carries an attempt which is no longer the job's attempt gets
`StaleAttempt`, the fence that makes resume safe against late or redelivered tasks. Segment
moves go through `FencedCAS` (live attempt only, with one exception: see HandoffStatus),
instance moves through `InstanceStateCAS`.
The Redis key names are the store's (`queue_app.store`); these classes take keys as arguments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import redis

from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt

T = TypeVar("T")


class JobState(StrEnum):
    """Where a job is in its life; each attempt walks QUEUED/PREEMPTED -> ... -> TERMINATING."""

    QUEUED = "QUEUED"
    """Submitted; its chain has not started provisioning yet."""
    PROVISIONING = "PROVISIONING"
    """Asking the provider for an instance (waiting for capacity counts here)."""
    BOOTING = "BOOTING"
    """Launched; waiting for the instance to be up and reachable over SSH."""
    VERIFYING = "VERIFYING"
    """Checking the instance offers what the job needs (GPU, memory, disk)."""
    BOOTSTRAPPING = "BOOTSTRAPPING"
    """Installing the code bundle and starting the GPU-side worker."""
    TRAINING = "TRAINING"
    """Training segment by segment, a checkpoint pulled after each."""
    COLLECTING = "COLLECTING"
    """Training is done; copying the final artifacts home."""
    TERMINATING = "TERMINATING"
    """Artifacts are home; terminating the job's instances and confirming they are gone."""
    PREEMPTING = "PREEMPTING"
    """The instance got an interruption notice while training: the trainer finishes its step
    and checkpoints while the next attempt starts at once (PREEMPTED), without waiting for the
    checkpoint or the instance's death; the checkpoint is handed off to it (HandoffStatus,
    jobs.notice_handoff)."""
    PREEMPTED = "PREEMPTED"
    """The instance was lost without our asking; the next attempt resumes from a checkpoint."""
    PAUSED = "PAUSED"
    """Drained (`queue drain`): its newest checkpoint pulled, its instance terminated, it waits
    at no cost; `queue drain --undo` resumes it as attempt+1 from that checkpoint. Not a
    preemption: it never counts against max_preemptions or max_attempts."""
    SUCCEEDED = "SUCCEEDED"
    """Terminal: trained, collected, every instance gone."""
    FAILED = "FAILED"
    """Terminal: the job cannot succeed; `reason` says why."""
    CANCELLED = "CANCELLED"
    """Terminal: a person cancelled it."""
    COST_CAPPED = "COST_CAPPED"
    """Terminal: it reached its own, its sweep's or the daily cost cap."""


S = JobState
TERMINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.COST_CAPPED})
# States in which the job holds (or is getting) an instance.
INSTANCE_STATES = frozenset(
    {S.PROVISIONING, S.BOOTING, S.VERIFYING, S.BOOTSTRAPPING, S.TRAINING, S.PREEMPTING}
)
_EXITS = {S.FAILED, S.CANCELLED, S.COST_CAPPED}

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.PROVISIONING, S.FAILED, S.CANCELLED}),
    S.PROVISIONING: frozenset({S.BOOTING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.BOOTING: frozenset({S.VERIFYING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.VERIFYING: frozenset({S.BOOTSTRAPPING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.BOOTSTRAPPING: frozenset({S.TRAINING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    S.TRAINING: frozenset({S.COLLECTING, S.PREEMPTING, S.PREEMPTED, S.PAUSED, *_EXITS}),
    # Noticed: PREEMPTED as soon as supervise_training sees it (the checkpoint is handed off).
    S.PREEMPTING: frozenset({S.PREEMPTED, *_EXITS}),
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
    """The provider accepted the launch; the cost clock runs from our launch timestamp."""
    TERMINATING = "TERMINATING"
    """We asked the provider to terminate it; not yet confirmed gone."""
    TERMINATED = "TERMINATED"
    """Confirmed gone at the provider: the cost clock stopped (terminal)."""


INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    InstanceState.LAUNCHED: frozenset({InstanceState.TERMINATING, InstanceState.TERMINATED}),
    InstanceState.TERMINATING: frozenset({InstanceState.TERMINATED}),
    InstanceState.TERMINATED: frozenset(),
}


class SegmentStatus(StrEnum):
    """Where an attempt's current training segment is (`AttemptRecord.segment_status`)."""

    SENT = "sent"
    """The supervisor sent its message; no worker has started it (may be sent again)."""
    RUNNING = "running"
    """A GPU-side worker is training it."""
    DONE = "done"
    """It ended with a checkpoint (time up, run finished, or stopped on request)."""
    FAILED = "failed"
    """Training raised; `segment_error` says what."""


# None: the attempt has sent no segment yet. DONE -> SENT is segment n+1 after segment n;
# SENT -> SENT re-sends a message that a crashed supervisor may have lost.
SEGMENT_TRANSITIONS: Mapping[SegmentStatus | None, frozenset[SegmentStatus]] = {
    None: frozenset({SegmentStatus.SENT}),
    SegmentStatus.SENT: frozenset({SegmentStatus.SENT, SegmentStatus.RUNNING}),
    SegmentStatus.RUNNING: frozenset({SegmentStatus.DONE, SegmentStatus.FAILED}),
    SegmentStatus.DONE: frozenset({SegmentStatus.SENT}),
    SegmentStatus.FAILED: frozenset(),
}


class HandoffStatus(StrEnum):
    """Where the hand-off of a noticed attempt's checkpoint to the next attempt is
    (`AttemptRecord.handoff`, jobs.notice_handoff). The next attempt starts at the notice, so
    the noticed attempt is stale while its segment still ends and its checkpoint is pulled."""

    OPEN = "open"
    """The next attempt has started; this attempt's noticed segment is ending and its
    checkpoint is being pulled. The one exception to the attempt fence: while its hand-off is
    open, a stale attempt may still write its own attempt record (the segment's end, the
    pull), never the job's record."""
    KEPT = "kept"
    """The checkpoint written on notice is in the store and verifies (`handoff_checkpoint`)."""
    LOST = "lost"
    """It could not be kept (none written, it does not verify, the instance died, or the wait
    ran out); the next attempt resumes from the newest checkpoint that verifies."""


HANDOFF_TRANSITIONS: Mapping[HandoffStatus | None, frozenset[HandoffStatus]] = {
    None: frozenset({HandoffStatus.OPEN}),
    HandoffStatus.OPEN: frozenset({HandoffStatus.KEPT, HandoffStatus.LOST}),
    HandoffStatus.KEPT: frozenset(),
    HandoffStatus.LOST: frozenset(),
}


def allowed_from(table: Mapping[T, frozenset[T]], target: T) -> list[T]:
    """The states from which `table` allows a move to `target`."""
    return [s for s, targets in table.items() if target in targets]


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Encode values for a Redis hash: text as is, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


# KEYS: job, events[, the new attempt's hash]. ARGV: attempt, target, allowed_from (JSON list), now,
# new_attempt ("" for none), extra fields (JSON object), reason ("" for none), allow_same
# ("1"/"0"), job id. A new attempt's record is created in the same step as the job's attempt
# moves to it, so no reader ever finds the job on an attempt that has no record.
# Returns {"OK", previous_state} | {"SAME", state} | {"STALE", attempt} | {"ILLEGAL", state} |
# {"MISSING", ""}.
_JOB_CAS_LUA = """
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
if new_attempt ~= '' and KEYS[3] then
  redis.call('HSETNX', KEYS[3], 'started_at', ARGV[4])
  redis.call('HSETNX', KEYS[3], 'segment', '0')
  redis.call('HSET', KEYS[3], 'job_id', ARGV[9], 'attempt', new_attempt)
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[7]) end
local extra = cjson.decode(ARGV[6])
for k, v in pairs(extra) do redis.call('HSET', KEYS[1], k, v) end
local event = {ts = tonumber(ARGV[4]), attempt = tonumber(new_attempt ~= '' and new_attempt
  or attempt), from = cur, to = ARGV[2], reason = ARGV[7]}
redis.call('RPUSH', KEYS[2], cjson.encode(event))
return {'OK', cur}
"""

# KEYS: job, target hash. ARGV: attempt, conditions (JSON object field -> expected value, "" for
# absent), fields (JSON object). Writes only for the live attempt (or to a stale attempt's own
# record while its hand-off is open) and when every condition holds.
_FENCED_CAS_LUA = """
local cur_attempt = redis.call('HGET', KEYS[1], 'attempt')
if not cur_attempt then return {'MISSING', ''} end
if cur_attempt ~= ARGV[1] and (KEYS[2] == KEYS[1]
    or redis.call('HGET', KEYS[2], 'handoff') ~= 'open') then
  return {'STALE', cur_attempt}
end
local conditions = cjson.decode(ARGV[2])
for k, expected in pairs(conditions) do
  local v = redis.call('HGET', KEYS[2], k) or ''
  if v ~= expected then return {'MISMATCH', k} end
end
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
return {'OK', ''}
"""

# KEYS: instance, live-instances set. ARGV: target, allowed_from (JSON list), timestamp field,
# timestamp (kept if already set), instance id, "1" to drop it from the live set.
# Returns {"OK", previous} | {"ILLEGAL", state} | {"MISSING", ""}; a repeat of the move is OK.
_INSTANCE_CAS_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'MISSING', ''} end
if cur ~= ARGV[1] then
  local ok = false
  for _, s in ipairs(cjson.decode(ARGV[2])) do if s == cur then ok = true end end
  if not ok then return {'ILLEGAL', cur} end
  redis.call('HSET', KEYS[1], 'state', ARGV[1])
end
redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[4])
if ARGV[6] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) end
return {'OK', cur}
"""


class JobStateCAS:
    """Moves a job's (state, attempt) if the table allows it, appending the move to its events."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_JOB_CAS_LUA)

    def __call__(
        self,
        keys: tuple[str, ...],
        job_id: str,
        attempt: int,
        target: JobState,
        *,
        new_attempt: int | None = None,
        reason: str | None = None,
        allow_same: bool = False,
        fields: Mapping[str, Any],
    ) -> JobState:
        """Returns the previous state (`target` itself for a repeat that is allowed); raises
        StaleAttempt, IllegalTransition or NotFoundError. `keys`: the job hash, its events and,
        with `new_attempt`, that attempt's hash (created by the same move)."""
        outcome, value = self._script(
            keys=list(keys),
            args=[
                str(attempt),
                str(target),
                json.dumps([str(s) for s in allowed_from(JOB_TRANSITIONS, target)]),
                repr(time.time()),
                "" if new_attempt is None else str(new_attempt),
                json.dumps(encode_fields(fields)),
                reason or "",
                "1" if allow_same else "0",
                job_id,
            ],
        )
        if outcome in ("OK", "SAME"):
            return JobState(value)
        if outcome == "STALE":
            raise StaleAttempt(job_id, attempt, int(value))
        if outcome == "ILLEGAL":
            raise IllegalTransition(job_id, value, str(target))
        raise NotFoundError("job", job_id)


class FencedCAS:
    """Writes fields of a job's hash or of a hash beside it, only while the caller's attempt is
    the job's attempt (or, for its own attempt record, while its hand-off is open) and every
    condition holds (the segment and hand-off moves are such writes)."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_FENCED_CAS_LUA)

    def __call__(
        self,
        keys: tuple[str, str],
        job_id: str,
        attempt: int,
        fields: Mapping[str, Any],
        conditions: Mapping[str, Any] | None = None,
    ) -> bool:
        """False on a condition mismatch; StaleAttempt when the attempt is not live.
        `keys`: the job hash, the hash to write."""
        outcome, value = self._script(
            keys=list(keys),
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

    def move_segment(
        self,
        keys: tuple[str, str],
        job_id: str,
        attempt: int,
        current: tuple[int, SegmentStatus | None],
        target: tuple[int, SegmentStatus],
        fields: Mapping[str, Any],
    ) -> bool:
        """Move the attempt's segment from (number, status) `current` to `target`, with
        `fields`; False when it is not at `current` (a duplicate or late message)."""
        if target[1] not in SEGMENT_TRANSITIONS[current[1]]:
            raise ValueError(f"segment status {current[1]} -> {target[1]} is not a transition")
        conditions = {"segment": current[0], "segment_status": current[1] or ""}
        moved = {"segment": target[0], "segment_status": target[1], **fields}
        return self(keys, job_id, attempt, moved, conditions)

    def move_handoff(
        self,
        keys: tuple[str, str],
        job_id: str,
        attempt: int,
        current: HandoffStatus | None,
        target: HandoffStatus,
        fields: Mapping[str, Any],
    ) -> bool:
        """Move the attempt's hand-off from `current` to `target`, with `fields`; False when it
        is not at `current` (another process moved it first)."""
        if target not in HANDOFF_TRANSITIONS[current]:
            raise ValueError(f"hand-off {current} -> {target} is not a transition")
        conditions = {"handoff": current or ""}
        return self(keys, job_id, attempt, {"handoff": target, **fields}, conditions)


class InstanceStateCAS:
    """Moves an instance's state if the table allows it, stamping when it first got there."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_INSTANCE_CAS_LUA)

    def __call__(
        self,
        keys: tuple[str, str],
        instance_id: str,
        target: InstanceState,
        stamp: tuple[str, float],
    ) -> bool:
        """False when the table forbids the move (the instance stays as it is); a repeat is
        True. `keys`: the instance hash, the live-instances set; `stamp`: (field, time), kept
        if already set. Leaving for TERMINATED drops the instance from the live set."""
        outcome, _ = self._script(
            keys=list(keys),
            args=[
                str(target),
                json.dumps([str(s) for s in allowed_from(INSTANCE_TRANSITIONS, target)]),
                stamp[0],
                json.dumps(stamp[1]),
                instance_id,
                "1" if target is InstanceState.TERMINATED else "0",
            ],
        )
        if outcome == "MISSING":
            raise NotFoundError("instance", instance_id)
        return bool(outcome == "OK")
