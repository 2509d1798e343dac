"""What has been spent, from our own launch/terminate timestamps (price x running time): per job
(all its attempts), per sweep (all its jobs) and per UTC day (every instance that ran that day).

Read in a handful of round trips whatever the fleet's size. The day's instances are
those launched that day plus those a tick saw live that day (set `sf:watchdog:day:<date>`, kept
three days), so an instance launched earlier and still running counts from midnight on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from jobs.job_cost import costs_by_job, sweep_cost_usd
from queue_app.keys import INSTANCES, attempt_key, instance_key, job_key, sweep_jobs_key, sweep_key
from queue_app.records import InstanceRecord
from queue_app.store import Store
from watchdog.bulk import hget_many, hgetall_many
from watchdog.fleet import Fleet

DAY_KEY_TTL_S = 3 * 24 * 3600


def day_key(day: dt.date) -> str:
    return f"sf:watchdog:day:{day.isoformat()}"


def day_start(now: float) -> float:
    """Midnight UTC of the day `now` falls in, as a timestamp."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def cost_between(instance: InstanceRecord, start: float, end: float) -> float:
    """What `instance` cost between `start` and `end`."""
    running_from = max(instance.launched_at, start)
    running_to = min(instance.terminated_at or end, end)
    return max(0.0, running_to - running_from) / 3600.0 * instance.price_per_hour


@dataclass(frozen=True)
class Spend:
    job_usd: dict[str, float]
    """Every job of every sweep that has a live instance."""
    sweep_usd: dict[str, float]
    sweep_budget_usd: dict[str, float | None]
    day_usd: float | None
    """None when no daily cap is set (then it is not computed)."""


def load_spend(store: Store, fleet: Fleet, now: float, with_day: bool) -> Spend:
    known = {t.instance.instance_id: t.instance for t in fleet.tracked}
    sweep_ids = sorted({t.instance.sweep_id for t in fleet.tracked})
    with store.r.pipeline(transaction=False) as pipe:
        for sweep_id in sweep_ids:
            pipe.lrange(sweep_jobs_key(sweep_id), 0, -1)
            pipe.hget(sweep_key(sweep_id), "budget_usd")
        replies = pipe.execute()
    sweep_jobs = dict(zip(sweep_ids, replies[0::2], strict=True))
    budgets = {s: float(b) if b else None for s, b in zip(sweep_ids, replies[1::2], strict=True)}
    job_ids = [j for s in sweep_ids for j in sweep_jobs[s]]
    job_instances = _job_instance_ids(store, job_ids)
    wanted = {i for ids in job_instances.values() for i in ids}
    day_ids: set[str] = set()
    if with_day:
        day_ids = _day_instance_ids(store, fleet, now)
    instances = {**_load_instances(store, (wanted | day_ids) - known.keys()), **known}
    ran = (instances[i] for ids in job_instances.values() for i in ids if i in instances)
    costs = costs_by_job(ran, now)
    job_usd = {j: costs.get(j, 0.0) for j in job_instances}
    sweep_usd = {s: sweep_cost_usd(sweep_jobs[s], job_usd) for s in sweep_ids}
    day_usd = None
    if with_day:
        start = day_start(now)
        day_usd = sum(cost_between(instances[i], start, now) for i in day_ids if i in instances)
    return Spend(job_usd, sweep_usd, budgets, day_usd)


def _job_instance_ids(store: Store, job_ids: list[str]) -> dict[str, list[str]]:
    """Job id -> the instance ids of all its attempts (two round trips)."""
    attempts = [int(a or 0) for a in hget_many(store.r, [job_key(j) for j in job_ids], "attempt")]
    pairs = [(j, a) for j, n in zip(job_ids, attempts, strict=True) for a in range(1, n + 1)]
    keys = [attempt_key(j, a) for j, a in pairs]
    out: dict[str, list[str]] = {j: [] for j in job_ids}
    for (job_id, _), instance_id in zip(
        pairs, hget_many(store.r, keys, "instance_id"), strict=True
    ):
        if instance_id:
            out[job_id].append(instance_id)
    return out


def _day_instance_ids(store: Store, fleet: Fleet, now: float) -> set[str]:
    """Instances that ran today; records today's live ones for later ticks."""
    key = day_key(dt.datetime.fromtimestamp(now, dt.UTC).date())
    live = [t.instance.instance_id for t in fleet.tracked]
    with store.r.pipeline(transaction=False) as pipe:
        if live:
            pipe.sadd(key, *live)
        pipe.expire(key, DAY_KEY_TTL_S)
        pipe.smembers(key)
        pipe.zrangebyscore(INSTANCES, day_start(now), "+inf")
        *_, seen, launched = pipe.execute()
    return set(seen) | set(launched)


def _load_instances(store: Store, ids: Iterable[str]) -> dict[str, InstanceRecord]:
    ordered = sorted(ids)
    replies = hgetall_many(store.r, [instance_key(i) for i in ordered])
    pairs = zip(ordered, replies, strict=True)
    return {i: InstanceRecord.from_hash(raw) for i, raw in pairs if raw}
