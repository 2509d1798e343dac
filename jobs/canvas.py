"""Canvas builders: a job is a chain of its lifecycle stages, a sweep is a chord of job chains
whose body, `finalize_sweep`, runs exactly once with every job's result in grid order."""

from __future__ import annotations

from celery import Signature, chord

from jobs.pipeline import FINALIZE_SWEEP_TASK, JobRef, stage_chain
from queue_app.celery_app import app


def job_chain(job_id: str, sweep_id: str) -> Signature:
    """provision -> ... -> terminate for the job's first attempt."""
    return stage_chain(JobRef(job_id=job_id, attempt=1, sweep_id=sweep_id))


def sweep_chord(sweep_id: str, job_ids: list[str]) -> Signature:
    body = app.signature(FINALIZE_SWEEP_TASK, kwargs={"sweep_id": sweep_id})
    return chord([job_chain(job_id, sweep_id) for job_id in job_ids], body)
