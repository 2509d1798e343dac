"""Teardown at the providers: which providers to tear down, every instance of ours terminated
(those recorded live in Redis and those a provider lists with our name prefix), and listed again
until none remains, naming exactly which did not go. Works without Redis (`store` None) from the
provider listings alone. Also what the instances torn down cost."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from jobs.instances import confirm_terminated
from jobs.job_cost import costs_by_job, sweep_cost_usd
from jobs.providers import INSTANCE_NAME_PREFIX, Instance, Provider, ProviderError, get_provider
from ops.steps import StepReport
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.store import Store

POLL_S = 1.0
UNLISTED = "*"


@dataclass
class Fleet:
    """What teardown works on: providers by name, instances per provider, jobs touched."""

    providers: dict[str, Provider] = field(default_factory=dict)
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    cancelled: dict[str, str] = field(default_factory=dict)

    def note_instance(self, provider: str, instance_id: str, **fields: Any) -> None:
        entry = self.instances.setdefault(
            (provider, instance_id), {"provider": provider, "instance_id": instance_id}
        )
        entry.update({k: v for k, v in fields.items() if v is not None})


def configured_providers(
    settings: Settings, store: Store | None, only: str | None
) -> tuple[set[str], dict[str, int]]:
    """Provider names to tear down (local when it has instance folders, lambda when a key is
    configured, any provider an instance record names) and live records per provider."""
    from jobs.providers.lambda_cloud import read_api_key

    live: dict[str, int] = {}
    if store is not None:
        for record in store.instances(live_only=True):
            live[record.provider] = live.get(record.provider, 0) + 1
    names = set(live)
    if settings.local_instances_dir.is_dir():
        names.add("local")
    try:
        if read_api_key(settings):
            names.add("lambda")
    except ProviderError:
        names.add("lambda")  # a key file that cannot be read: building it reports why
    if only is not None:
        names &= {only}
    return names, live


def build_providers(
    settings: Settings, names: set[str], live: dict[str, int], fleet: Fleet, report: StepReport
) -> None:
    for name in sorted(names):
        try:
            fleet.providers[name] = get_provider(name, settings)
        except (ProviderError, ValueError) as exc:
            report.record(
                f"provider {name}",
                False,
                f"cannot reach it ({exc}); {live.get(name, 0)} instance(s) recorded live there",
            )
    if not names:
        report.record("providers", True, "no provider is configured and no instance recorded")


def ours(provider: Provider) -> list[Instance]:
    """Instances the provider runs with our name prefix and not gone."""
    return [
        i for i in provider.list() if i.name.startswith(INSTANCE_NAME_PREFIX) and not i.status.gone
    ]


def terminate_all(store: Store | None, fleet: Fleet, report: StepReport) -> None:
    """Ask each provider to terminate every instance of ours it lists or Redis records live."""
    for name, provider in sorted(fleet.providers.items()):
        try:
            listed = ours(provider)
        except ProviderError as exc:
            report.record(f"terminate at {name}", False, f"cannot list instances: {exc}")
            continue
        targets = {i.id: i for i in listed}
        records = _live_records(store, name)
        asked, failed = [], []
        for instance_id in sorted(set(targets) | set(records)):
            seen, record = targets.get(instance_id), records.get(instance_id)
            # The record's price is what cost accounting charges; else what the provider quotes.
            known = record or seen
            fleet.note_instance(
                name,
                instance_id,
                name=known.name if known else None,
                status_before=str(seen.status) if seen else "not listed",
                price_per_hour=known.price_per_hour if known else None,
            )
            try:
                if store is not None and instance_id in records:
                    store.mark_instance_terminating(instance_id)
                provider.terminate(instance_id)
                asked.append(instance_id)
            except ProviderError as exc:
                failed.append(f"{instance_id} ({exc})")
        detail = f"asked to terminate {len(asked)} instance(s)"
        if failed:
            detail += f"; refused: {', '.join(failed)}"
        report.record(f"terminate at {name}", not failed, detail, instances=asked)


def _live_records(store: Store | None, provider: str) -> dict[str, InstanceRecord]:
    if store is None:
        return {}
    return {i.instance_id: i for i in store.instances(live_only=True) if i.provider == provider}


def verify_gone(store: Store | None, fleet: Fleet, report: StepReport, timeout_s: float) -> None:
    """List again (terminating again what remains) until nothing of ours is left."""
    deadline = time.monotonic() + timeout_s
    remaining = _remaining(store, fleet)
    while remaining and time.monotonic() < deadline:
        report.note(f"still there: {', '.join(f'{n}/{i}' for n, i in sorted(remaining))}")
        for name, instance_id in remaining:
            if instance_id != UNLISTED:
                with contextlib.suppress(ProviderError):  # the next listing tells
                    fleet.providers[name].terminate(instance_id)
        time.sleep(POLL_S)
        remaining = _remaining(store, fleet)
    for key, entry in fleet.instances.items():
        entry["result"] = remaining.get(key, "gone")
    for name in sorted(fleet.providers):
        left = {i: why for (n, i), why in remaining.items() if n == name}
        if not left:
            report.record(f"verify at {name}", True, "nothing of ours is left")
        for instance_id, why in sorted(left.items()):
            what = f"could not list: {why}" if instance_id == UNLISTED else f"{instance_id}: {why}"
            report.record(
                f"verify at {name}", False, f"not confirmed gone after {timeout_s:.0f}s: {what}"
            )


def _remaining(store: Store | None, fleet: Fleet) -> dict[tuple[str, str], str]:
    """(provider, instance id) -> why it counts as still there (UNLISTED: listing failed)."""
    remaining: dict[tuple[str, str], str] = {}
    for name, provider in fleet.providers.items():
        try:
            for instance in ours(provider):
                remaining[(name, instance.id)] = f"status {instance.status}"
                fleet.note_instance(name, instance.id, name=instance.name)
        except ProviderError as exc:
            remaining[(name, UNLISTED)] = str(exc)
            continue
        if store is None:
            continue
        for record in _live_records(store, name).values():
            try:
                if not confirm_terminated(store, provider, record):
                    remaining[(name, record.instance_id)] = "not confirmed terminated"
            except ProviderError as exc:
                remaining[(name, record.instance_id)] = f"cannot ask {name}: {exc}"
    return remaining


def cost_summary(store: Store | None, fleet: Fleet) -> dict[str, Any]:
    """Spend of the instances torn down and of the sweeps they belonged to; without Redis,
    only the hourly rate that was stopped (providers do not report launch times)."""
    stopped_rate = sum(e.get("price_per_hour") or 0.0 for e in fleet.instances.values())
    if store is None:
        return {"usd_per_hour_stopped": round(stopped_rate, 4), "instances_usd": None}
    every = {i.instance_id: i for i in store.instances()}
    torn_down = [every[iid] for (_, iid) in fleet.instances if iid in every]
    sweep_ids = {r.sweep_id for r in torn_down}
    sweep_ids |= {j.sweep_id for j in store.jobs(list(fleet.cancelled))}
    job_usd = costs_by_job(every.values())
    sweeps = {
        sweep.sweep_id: {
            "cost_usd": round(sweep_cost_usd(sweep.job_ids, job_usd), 6),
            "budget_usd": sweep.budget_usd,
        }
        for sweep in (store.sweep(sweep_id) for sweep_id in sorted(sweep_ids))
    }
    return {
        "usd_per_hour_stopped": round(stopped_rate, 4),
        "instances_usd": round(sum(r.cost_usd() for r in torn_down), 6),
        "sweeps": sweeps,
    }


def cost_table(cost: dict[str, Any]) -> Table:
    table = Table(title="cost")
    table.add_column("what")
    table.add_column("USD", justify="right")
    table.add_row("hourly rate stopped", f"{cost['usd_per_hour_stopped']:.2f}/h")
    if cost["instances_usd"] is not None:
        table.add_row("instances torn down, total", f"{cost['instances_usd']:.4f}")
        for sweep_id, s in cost["sweeps"].items():
            budget = f" of {s['budget_usd']:.2f}" if s["budget_usd"] is not None else ""
            table.add_row(f"sweep {sweep_id}", f"{s['cost_usd']:.4f}{budget}")
    return table
