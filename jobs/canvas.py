"""Canvas builders: a job is a chain of its lifecycle stages, a sweep is a chord of job chains
whose body, `finalize_sweep`, runs exactly once with every job's result in grid order.

A pack's members train on the pack job's chain (sent on its own, outside the chord); each
member's place in the chord is held by `follow_pack` (jobs.pack_tasks), which hands the chord
the member's result once the member is final."""

from __future__ import annotations

from collections.abc import Set

from celery import Signature, chord

from jobs.pipeline import FINALIZE_SWEEP_TASK, FOLLOW_PACK_TASK, JobRef, stage_chain
from queue_app.celery_app import app


def job_chain(job_id: str, sweep_id: str) -> Signature:
    """provision -> ... -> terminate for the job's first attempt."""
    return stage_chain(JobRef(job_id=job_id, attempt=1, sweep_id=sweep_id))


def pack_chain(pack_id: str, sweep_id: str) -> Signature:
    """The pack job's chain: the instance stages for all its members."""
    return job_chain(pack_id, sweep_id)


def follower(job_id: str, sweep_id: str) -> Signature:
    """A pack member's place in the sweep chord."""
    ref = JobRef(job_id=job_id, attempt=1, sweep_id=sweep_id)
    return app.signature(FOLLOW_PACK_TASK, args=(ref.message(),))


def sweep_chord(sweep_id: str, job_ids: list[str], in_packs: Set[str] = frozenset()) -> Signature:
    """The chord of the sweep's jobs: a job chain each, a follower for those `in_packs`."""
    body = app.signature(FINALIZE_SWEEP_TASK, kwargs={"sweep_id": sweep_id})
    headers = [
        follower(job_id, sweep_id) if job_id in in_packs else job_chain(job_id, sweep_id)
        for job_id in job_ids
    ]
    return chord(headers, body)
