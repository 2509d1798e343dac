"""Keeping a pack's checkpoints: after each of a pack's segments every member has written its
own checkpoint, all at one stream position (`AttemptRecord.member_outcomes`), and each goes
into the member's own place in the store through the one function a single job's goes through
(jobs.checkpoint_pull): uploaded by the instance in the background, on the member's own upload
board, or pulled over SFTP where the instance cannot reach the store. `supervise_training`,
the watchdog's drain step and teardown all keep a pack's checkpoints with `keep_pack_checkpoints`,
so "drain, then teardown, loses nothing" holds for every member as for a single job.

A member whose checkpoint of the segment cannot be kept (its upload rejected or given up, a
pull that does not verify) is reported alone: the others count, and it resumes from its own
previous checkpoint (or, in `supervise_training`, fails alone).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from jobs.checkpoint_pull import (
    CheckpointNotKept,
    pull_segment_checkpoint,
    serve_checkpoint_uploads,
)
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import Settings
from queue_app.store import Store


@dataclass
class PackCheckpoints:
    """Where the members' checkpoints of one pack segment stand."""

    settled: bool
    """Every member's checkpoint is kept or lost (False: an upload goes on, or another process
    pulls one right now)."""
    lost: dict[str, str] = field(default_factory=dict)
    """Member id -> why its checkpoint of the segment is not kept."""


def keep_pack_checkpoints(
    store: Store,
    settings: Settings,
    pack: JobRecord,
    instance: InstanceRecord,
    record: AttemptRecord,
) -> PackCheckpoints:
    """Bring every member's checkpoint of `record`'s finished segment into the store (each
    member's own, recorded as its latest); once all are settled, note the stream position on
    the pack and the segment as pulled. SSH and store errors pass through."""
    lost: dict[str, str] = {}
    settled = True
    for member_id, outcome in record.member_outcomes.items():
        member = store.job(member_id)
        if not outcome.get("checkpoint") or member.attempt != record.attempt:
            continue
        if store.attempt(member_id, record.attempt).pulled_segment >= record.segment:
            continue
        own = record.model_copy(
            update={"job_id": member_id, "segment_checkpoint": outcome["checkpoint"]}
        )
        try:
            settled = pull_segment_checkpoint(store, settings, member, instance, own) and settled
        except CheckpointNotKept as exc:
            lost[member_id] = str(exc)
    if not settled:
        return PackCheckpoints(False, lost)
    names = [posixpath.basename(o.get("checkpoint") or "") for o in record.member_outcomes.values()]
    if any(names):  # the stream position every member checkpointed at, for the pack's reasons
        store.update_job(pack.job_id, record.attempt, latest_checkpoint=max(names))
    store.update_attempt(pack.job_id, record.attempt, pulled_segment=record.segment)
    return PackCheckpoints(True, lost)


def serve_member_uploads(store: Store, settings: Settings, pack: JobRecord, attempt: int) -> None:
    """Move on the checkpoint uploads of every member that trained in the pack's `attempt`
    (those that left it too: their last upload may still go on)."""
    for member in store.jobs(pack.members):
        if member.attempt == attempt:
            serve_checkpoint_uploads(store, settings, member, attempt)


def members_leave(store: Store, record: AttemptRecord) -> bool:
    """Some member ends with `record`'s segment (it finished, failed, is stopped or has
    left): no later segment's checkpoint replaces this one's, so it is waited for."""
    for member_id, outcome in record.member_outcomes.items():
        member = store.job(member_id)
        if outcome.get("done") or outcome.get("error") or member.terminal:
            return True
        if member.stop_requested:
            return True
    return False
