"""Orphans: instances at a provider with our name prefix that no live job attempt uses.

That covers instances created outside any job, ones whose launch was never registered (a
provision that crashed), ones of a stale, preempted or finished attempt that are still up, and
ones whose termination we asked for that the provider still runs (not a noticed instance whose
checkpoint is still being handed off: jobs.notice_handoff). Each is terminated once it has
been an orphan for `SAEFLEET_WATCHDOG_ORPHAN_GRACE_S` (first-seen times in the hash
`sf:watchdog:orphans`), so a launch that is being registered is never reaped.

It also settles our records: an instance the provider no longer lists and reports gone is marked
terminated, which stops its cost clock and takes it out of the live set. Together with the
stages' own termination this is why teardown, a crashed control plane, or a lost chain never
leaves a GPU billing."""

from __future__ import annotations

import logging

from jobs.instances import confirm_terminated
from jobs.providers import Instance, Provider, ProviderError
from queue_app.keys import instance_key
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState
from watchdog.actions import terminate_instance
from watchdog.context import TickContext
from watchdog.fleet import Fleet, Tracked
from watchdog.provider_view import ProviderView

CHECK = "orphans"
SEEN_KEY = "sf:watchdog:orphans"


def check_orphans(ctx: TickContext, fleet: Fleet, view: ProviderView) -> set[str]:
    """Terminate orphans past their grace period; returns their instance ids."""
    tracked = fleet.by_instance()
    orphans = {
        instance_id: (name, instance)
        for name, listed in view.listed.items()
        for instance_id, instance in listed.items()
        if instance_id not in tracked
        or not (tracked[instance_id].in_use or tracked[instance_id].handing_off)
    }
    first_seen = _first_seen(ctx, view, sorted(orphans))
    records = _records(ctx, [i for i in orphans if i not in tracked])
    reaped: set[str] = set()
    for instance_id, (name, instance) in sorted(orphans.items()):
        orphan_for = ctx.now - first_seen[instance_id]
        if orphan_for < ctx.settings.watchdog_orphan_grace_s:
            continue
        known = tracked.get(instance_id)
        record = known.instance if known else records.get(instance_id)
        why = f"orphan for {orphan_for:.0f}s: {_describe(known, record, instance)}"
        if record is None or record.state is InstanceState.TERMINATED:
            _terminate_at_provider(ctx, view.providers[name], instance, why)
        else:
            terminate_instance(ctx, CHECK, Tracked(record, None, None), why)
        reaped.add(instance_id)
    _settle(ctx, fleet, view)
    return reaped


def _first_seen(ctx: TickContext, view: ProviderView, orphan_ids: list[str]) -> dict[str, float]:
    """When each orphan was first seen as one (one round trip); instances that are no longer
    orphans are forgotten, unless a provider could not be listed (its orphans keep their
    clocks)."""
    with ctx.store.r.pipeline(transaction=False) as pipe:
        for instance_id in orphan_ids:
            pipe.hsetnx(SEEN_KEY, instance_id, repr(ctx.now))
        pipe.hgetall(SEEN_KEY)
        seen: dict[str, str] = pipe.execute()[-1]
    resolved = set(seen) - set(orphan_ids)
    if resolved and not view.failed:
        ctx.store.r.hdel(SEEN_KEY, *resolved)
    return {i: float(seen[i]) for i in orphan_ids}


def _records(ctx: TickContext, instance_ids: list[str]) -> dict[str, InstanceRecord]:
    """Our records of instances outside the live set (e.g. marked terminated, still running)."""
    with ctx.store.r.pipeline(transaction=False) as pipe:
        for instance_id in instance_ids:
            pipe.hgetall(instance_key(instance_id))
        replies = pipe.execute()
    pairs = zip(instance_ids, replies, strict=True)
    return {i: InstanceRecord.from_hash(raw) for i, raw in pairs if raw}


def _describe(known: Tracked | None, record: InstanceRecord | None, instance: Instance) -> str:
    if record is None:
        return f"{instance.name} is not an instance of any saefleet job"
    if known is None:
        return f"{instance.name} was recorded terminated but is still {instance.status}"
    job = known.job
    if job is None:
        return f"{instance.name}: its job {record.job_id} no longer exists"
    if job.attempt != record.attempt:
        return f"{instance.name}: its attempt {record.attempt} is stale (job at {job.attempt})"
    return f"{instance.name}: its job is {job.state}"


def _terminate_at_provider(
    ctx: TickContext, provider: Provider, instance: Instance, why: str
) -> None:
    """Terminate an instance we have no live record of (nothing to mark in the store)."""
    try:
        provider.terminate(instance.id)
    except ProviderError as exc:
        ctx.report.error(CHECK, instance.id, f"terminate failed: {exc}")
        return
    ctx.report.add(CHECK, "terminated", instance.id, why)


def _settle(ctx: TickContext, fleet: Fleet, view: ProviderView) -> None:
    """Mark terminated what the provider no longer runs, unless a live attempt uses it (that is
    an interruption, handled before this check)."""
    for tracked in fleet.tracked:
        instance = tracked.instance
        provider = view.providers.get(instance.provider)
        if provider is None or instance.instance_id in view.listed[instance.provider]:
            continue
        if tracked.in_use and not tracked.terminate_requested:
            continue
        try:
            gone = confirm_terminated(ctx.store, provider, instance)
        except ProviderError as exc:
            ctx.report.error(CHECK, instance.instance_id, f"cannot confirm termination: {exc}")
            continue
        if gone:
            gone_at = "confirmed gone at the provider; its cost clock stopped"
            ctx.report.add(CHECK, "settled", instance.instance_id, gone_at, level=logging.INFO)
