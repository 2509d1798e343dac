"""What a job has cost: price x running time of every instance launched for it, all attempts
together, from our own launch and terminate timestamps (`InstanceRecord.cost_usd`); a pack's
instance is shared by its members (`InstanceRecord.members`), evenly at each moment.

The one definition of a job's cost. The sweep summary, the status views, the demo, reports,
teardown's cost summary and the watchdog's cost caps all add up jobs through it; a sweep costs
what its jobs cost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping

from queue_app.records import InstanceRecord
from queue_app.store import Store


def hours_by_job(instances: Iterable[InstanceRecord], now: float | None = None) -> dict[str, float]:
    """The instance-hours each job is charged up to `now`, from the instances given (each
    counted once, whichever job's attempts listed it): all of an instance's to its job, or a
    pack's instance split evenly across the members training on it at each moment (once the
    last of them left, across those who left last)."""
    now = time.time() if now is None else now
    hours: dict[str, float] = {}
    for instance in {i.instance_id: i for i in instances}.values():
        for job_id, share in _shares(instance, now).items():
            hours[job_id] = hours.get(job_id, 0.0) + share
    return hours


def costs_by_job(instances: Iterable[InstanceRecord], now: float | None = None) -> dict[str, float]:
    """What each job has cost up to `now`, from the instances given: those of its attempts or
    any superset (a sweep's, the fleet's). A job none of them ran for is absent."""
    now = time.time() if now is None else now
    costs: dict[str, float] = {}
    for instance in {i.instance_id: i for i in instances}.values():
        for job_id, share in _shares(instance, now).items():
            costs[job_id] = costs.get(job_id, 0.0) + share * instance.price_per_hour
    return costs


def _shares(instance: InstanceRecord, now: float) -> dict[str, float]:
    """Job id -> the hours of `instance` charged to it."""
    if not instance.members:
        return {instance.job_id: instance.running_hours(now)}
    start = instance.launched_at
    end = max(start, instance.terminated_at or now)
    left = {m: min(max(instance.member_left_at.get(m, end), start), end) for m in instance.members}
    last = max(left.values())
    shares = dict.fromkeys(instance.members, 0.0)
    cuts = sorted({start, end, *left.values()})
    for t0, t1 in itertools.pairwise(cuts):
        training = [m for m in instance.members if left[m] > t0]
        sharing = training or [m for m in instance.members if left[m] == last]
        for member in sharing:
            shares[member] += (t1 - t0) / 3600.0 / len(sharing)
    return shares


def sweep_cost_usd(job_ids: Iterable[str], job_usd: Mapping[str, float]) -> float:
    """What a sweep has cost: what its jobs have (`job_usd` as `costs_by_job` returns it)."""
    return sum(job_usd.get(job_id, 0.0) for job_id in job_ids)


def job_instances(store: Store, job_id: str) -> list[InstanceRecord]:
    """The instances of all the attempts of `job_id`."""
    return [store.instance(a.instance_id) for a in store.attempts(job_id) if a.instance_id]


def job_cost_usd(store: Store, job_id: str, now: float | None = None) -> float:
    """What `job_id` has cost up to `now` (the instances of all its attempts, read from `store`)."""
    return costs_by_job(job_instances(store, job_id), now).get(job_id, 0.0)
