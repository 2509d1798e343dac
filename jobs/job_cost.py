"""What a job has cost: price x running time of every instance launched for it, all attempts
together, from our own launch and terminate timestamps (`InstanceRecord.cost_usd`).

The one definition of a job's cost. The sweep summary, the status views, the demo, reports,
teardown's cost summary and the watchdog's cost caps all add up jobs through it; a sweep costs
what its jobs cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from queue_app.records import InstanceRecord
from queue_app.store import Store


def costs_by_job(instances: Iterable[InstanceRecord], now: float | None = None) -> dict[str, float]:
    """What each job has cost up to `now`, from the instances given: those of its attempts or
    any superset (a sweep's, the fleet's). A job none of them ran for is absent."""
    now = time.time() if now is None else now
    costs: dict[str, float] = {}
    for instance in instances:
        costs[instance.job_id] = costs.get(instance.job_id, 0.0) + instance.cost_usd(now)
    return costs


def sweep_cost_usd(job_ids: Iterable[str], job_usd: Mapping[str, float]) -> float:
    """What a sweep has cost: what its jobs have (`job_usd` as `costs_by_job` returns it)."""
    return sum(job_usd.get(job_id, 0.0) for job_id in job_ids)


def job_instances(store: Store, job_id: str) -> list[InstanceRecord]:
    """The instances of all the attempts of `job_id`."""
    return [store.instance(a.instance_id) for a in store.attempts(job_id) if a.instance_id]


def job_cost_usd(store: Store, job_id: str, now: float | None = None) -> float:
    """What `job_id` has cost up to `now` (the instances of all its attempts, read from `store`)."""
    return costs_by_job(job_instances(store, job_id), now).get(job_id, 0.0)
