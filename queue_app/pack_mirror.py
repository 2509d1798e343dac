"""A pack's members follow its state: a pack job (`JobRecord.members`, id `<sweep>-pNNN`) runs
the instance stages for jobs that train together on one instance, and each of its moves is
repeated on every member still in the pack (neither terminal nor left), through that member's
own compare-and-set with the same attempt. What is a member's alone (its success, its own
failure, a cancel) moves the member only; from then on it no longer follows the pack.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.statemachine import JobState

if TYPE_CHECKING:
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
