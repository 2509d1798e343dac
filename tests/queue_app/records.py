"""Sweep, job and instance records written straight into the store, for the tests of views and
reports that read them (no Celery, no instances)."""

from __future__ import annotations

import time
from typing import Any

from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store


def stored_spec(k: int = 8) -> dict[str, Any]:
    """A job's spec as submit stores it (only the fields a user set)."""
    return {
        "overrides": {"sae.k": k},
        "config": {
            "model": "tiny-lm",
            "layer": 1,
            "dataset": "corpus.jsonl",
            "sae": {"n_latents": 256, "k": k},
            "train": {"total_tokens": 4096},
        },
        "provider": {"name": "local"},
    }


def make_sweep(
    store: Store,
    sweep_id: str,
    states: list[JobState],
    budget_usd: float | None = 10.0,
    now: float | None = None,
) -> list[JobRecord]:
    """A sweep with one job per state (grid `sae.k` = 8, 16, ..., named as submission names
    them), created an hour before `now`."""
    now = time.time() if now is None else now
    jobs = [
        JobRecord(
            job_id=f"{sweep_id}-{i:04d}",
            sweep_id=sweep_id,
            index=i,
            name=f"sae.k={8 * 2**i}",
            state=state,
            attempt=1,
            spec=stored_spec(k=8 * 2**i),
            created_at=now - 3600,
            updated_at=now,
        )
        for i, state in enumerate(states)
    ]
    sweep = SweepRecord(
        sweep_id=sweep_id,
        name=f"{sweep_id}-name",
        created_at=now - 3600,
        spec={},
        job_ids=[j.job_id for j in jobs],
        budget_usd=budget_usd,
    )
    store.create_sweep(sweep, jobs)
    return jobs


def add_instance(
    store: Store,
    job: JobRecord,
    instance_id: str,
    price_per_hour: float,
    hours: float,
    provider: str = "local",
    terminated: bool = False,
    now: float | None = None,
    **fields: Any,
) -> InstanceRecord:
    """An instance launched `hours` ago for `job`'s attempt 1 (stopped now if `terminated`)."""
    now = time.time() if now is None else now
    record = InstanceRecord(
        instance_id=instance_id,
        provider=provider,
        name=f"sf-{job.job_id}-{job.attempt}",
        job_id=job.job_id,
        sweep_id=job.sweep_id,
        attempt=job.attempt,
        state=InstanceState.LAUNCHED,
        launched_at=now - hours * 3600,
        price_per_hour=price_per_hour,
        instance_type="gpu_1x_a10",
        capacity="on_demand",
        **fields,
    )
    store.register_instance(record)
    store.start_first_attempt(job.job_id)
    store.update_attempt(job.job_id, job.attempt, instance_id=instance_id)
    store.update_job(job.job_id, job.attempt, instance_id=instance_id)
    if terminated:
        store.mark_instance_terminated(instance_id, at=now)
    return store.instance(instance_id)
