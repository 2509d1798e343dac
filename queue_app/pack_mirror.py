"""A pack's members follow its state: a pack job (`JobRecord.members`, id `<sweep>-pNNN`) runs
the instance stages for jobs that train together on one instance, and each of its moves is
repeated on every member still in the pack (neither terminal nor left), through that member's
own compare-and-set with the same attempt. What is a member's alone (its success, its own
failure, a cancel) moves the member only; from then on it no longer follows the pack. A pack
split for memory (jobs.pack_split) adds pack jobs to its sweep with `add_packs`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.keys import JOBS, attempt_key, events_key, job_key, sweep_key
from queue_app.statemachine import JobState

if TYPE_CHECKING:
    from redis.client import Pipeline

    from queue_app.records import AttemptRecord, JobRecord
    from queue_app.store import Store

log = logging.getLogger(__name__)

_PACK_ID = re.compile(r"-p\d{3}$")
MIRRORED_FIELDS = ("instance_id", "preemptions")
"""Fields of a pack's move that its members take with it."""


def pack_id_for(sweep_id: str, number: int) -> str:
    """The id of a sweep's pack job `number` (from 0)."""
    return f"{sweep_id}-p{number:03d}"


def is_pack_id(job_id: str) -> bool:
    return _PACK_ID.search(job_id) is not None


def add_packs(
    store: Store, sweep_id: str, packs: list[tuple[JobRecord, AttemptRecord]]
) -> list[str]:
    """Add pack jobs to a sweep (a pack split, jobs.pack_split) in one transaction: each record
    with its current attempt's, numbered after the sweep's last pack; returns their ids. The
    records' own ids are replaced."""

    def add(pipe: Pipeline) -> list[str]:
        ids = json.loads(pipe.hget(sweep_key(sweep_id), "pack_ids") or "[]")
        last = max((int(i.rsplit("-p", 1)[1]) for i in ids), default=-1)
        new = [pack_id_for(sweep_id, last + 1 + n) for n in range(len(packs))]
        pipe.multi()
        for pack_id, (job, attempt) in zip(new, packs, strict=True):
            pipe.hset(job_key(pack_id), mapping={**job.to_hash(), "job_id": pack_id})
            pipe.zadd(JOBS, {pack_id: job.created_at})
            event = {"ts": time.time(), "attempt": job.attempt, "to": str(job.state)}
            pipe.rpush(events_key(pack_id), json.dumps({**event, "reason": job.reason or ""}))
            pipe.hset(
                attempt_key(pack_id, job.attempt), mapping={**attempt.to_hash(), "job_id": pack_id}
            )
        pipe.hset(sweep_key(sweep_id), "pack_ids", json.dumps(ids + new))
        return new

    new: list[str] = store.r.transaction(add, sweep_key(sweep_id), value_from_callable=True)
    return new


def following_members(store: Store, pack_id: str, attempt: int) -> list[str]:
    """The members of `pack_id` that still follow it at `attempt` (not terminal)."""
    members = store.job(pack_id).members
    return [m.job_id for m in store.jobs(members) if not m.terminal and m.attempt == attempt]


def mirror_transition(
    store: Store, pack_id: str, attempt: int, target: JobState, reason: str | None, fields: dict
) -> None:
    """Repeat the pack's move to `target` on its following members (best effort per member: a
    member that moved on alone meanwhile is left as it is)."""
    taken = {k: v for k, v in fields.items() if k in MIRRORED_FIELDS}
    for member in following_members(store, pack_id, attempt):
        if target is JobState.PROVISIONING:
            store.start_first_attempt(member)
        try:
            store.transition(member, attempt, target, reason=reason, allow_same=True, **taken)
        except (IllegalTransition, StaleAttempt, NotFoundError) as exc:
            log.info("pack %s -> %s: member %s stays: %s", pack_id, target, member, exc)


def mirror_begin_attempt(
    store: Store, pack_id: str, new_attempt: int, fields: dict[str, Any]
) -> None:
    """Begin `new_attempt` for every member that followed the pack's last attempt."""
    for member in following_members(store, pack_id, new_attempt - 1):
        try:
            store.begin_attempt(member, new_attempt, **fields)
        except (IllegalTransition, StaleAttempt, NotFoundError) as exc:
            log.info("pack %s attempt %d: member %s stays: %s", pack_id, new_attempt, member, exc)
