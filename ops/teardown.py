"""Tear the fleet down: nothing of ours is left billing (`ops/teardown`, `saefleet fleet teardown`).

Steps, each printed as it happens:
    1. stop provisioning    new sweeps are refused (the drained flag); jobs that hold no training
                            run yet (queued, provisioning, booting, verifying, bootstrapping,
                            preempted) are CANCELLED, so no stage launches another instance
    2. checkpoint           training jobs get the stop flag; they write a checkpoint, the control
                            plane pulls it and marks them CANCELLED (bounded by a timeout)
    3. terminate            every instance of ours at every configured provider (those recorded
                            live in Redis and those the provider lists with our name prefix)
    4. verify               list again at each provider until none remains; report exactly which
                            did not go
    5. cancel the rest      jobs still running are CANCELLED; their last pulled checkpoint stays
    6. cost                 what the affected sweeps and instances cost

Idempotent: "already gone" is success and a second run finds nothing to do. It needs only Redis
and the provider APIs (no Celery worker); without Redis it works from the provider listings
alone and says which steps it could not do.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from jobs.instances import confirm_terminated
from jobs.job_cost import costs_by_job, sweep_cost_usd
from jobs.providers import INSTANCE_NAME_PREFIX, Instance, Provider, ProviderError, get_provider
from ops.steps import StepReport, log_to_file, run_script
from queue_app.admission import set_drained
from queue_app.connection import connect
from queue_app.errors import IllegalTransition, StaleAttempt
from queue_app.records import InstanceRecord, JobRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import INSTANCE_STATES, JobState
from queue_app.store import Store

KNOWN_PROVIDERS = ("local", "lambda")
NOT_TRAINING_YET = INSTANCE_STATES - {JobState.TRAINING} | {JobState.QUEUED, JobState.PREEMPTED}
STOPPABLE = frozenset({JobState.TRAINING, JobState.COLLECTING})
POLL_S = 1.0
TEARDOWN_REASON = "torn down (ops/teardown)"
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


# ---- Redis (optional) ---------------------------------------------------------------------------


def reachable_store(settings: Settings) -> Store | None:
    """A Store when Redis answers now, else None (teardown then works from provider lists)."""
    try:
        store = connect(settings.broker_url)
        store.r.ping()
        return store
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None


def live_jobs(store: Store) -> list[JobRecord]:
    return [j for j in store.jobs(store.job_ids(limit=100_000)) if not j.terminal]


def cancel(store: Store, job: JobRecord, reason: str) -> bool:
    """Move `job` to CANCELLED with its checkpoint kept; False when it finished meanwhile."""
    for _ in range(5):
        job = store.job(job.job_id)
        if job.terminal or job.state is JobState.TERMINATING:
            return False
        kept = f"; last checkpoint kept: {job.latest_checkpoint}" if job.latest_checkpoint else ""
        try:
            store.update_job(job.job_id, job.attempt, stop_requested="cancel")
            store.transition(job.job_id, job.attempt, JobState.CANCELLED, reason=reason + kept)
            return True
        except (IllegalTransition, StaleAttempt):
            time.sleep(0.1)  # a stage moved it meanwhile: look again
    return False


def stop_provisioning(store: Store, fleet: Fleet, report: StepReport) -> None:
    from queue_app.celery_app import CONTROL_QUEUE, WATCHDOG_QUEUE

    # Control-plane queues stay consumed (a restarted worker too): cancelled jobs still run
    # their chains to `terminate` and the finalizer, and the watchdog keeps reaping.
    set_drained(store.r, "teardown", {}, keep=[CONTROL_QUEUE, WATCHDOG_QUEUE])
    for job in live_jobs(store):
        if job.state in NOT_TRAINING_YET and cancel(store, job, TEARDOWN_REASON):
            fleet.cancelled[job.job_id] = str(job.state)
    report.record(
        "stop provisioning",
        True,
        f"new sweeps refused; {len(fleet.cancelled)} job(s) not yet training cancelled",
        cancelled=sorted(fleet.cancelled),
    )


def checkpoint_training(store: Store, report: StepReport, timeout_s: float) -> None:
    """Ask training jobs to checkpoint and stop; wait until the control plane has pulled the
    checkpoint and ended them (supervise_training does), or the timeout passes."""
    jobs = [j for j in live_jobs(store) if j.state in STOPPABLE]
    for job in jobs:
        with contextlib.suppress(StaleAttempt):  # resumed meanwhile: the wait sees it end
            store.update_job(job.job_id, job.attempt, stop_requested="cancel")
    if not jobs:
        report.record("checkpoint", True, "no job was training")
        return
    deadline = time.monotonic() + timeout_s
    waiting, shown = [j.job_id for j in jobs], list[str]()
    while waiting and time.monotonic() < deadline:
        if waiting != shown:
            report.note(f"waiting for {len(waiting)} job(s) to checkpoint: {', '.join(waiting)}")
            shown = waiting
        time.sleep(POLL_S)
        waiting = [j.job_id for j in store.jobs(waiting) if not j.terminal]
    done = len(jobs) - len(waiting)
    detail = f"{done} of {len(jobs)} training job(s) checkpointed and stopped"
    if waiting:
        detail += f"; not within {timeout_s:.0f}s: {', '.join(waiting)} (cancelled below)"
    report.record("checkpoint", not waiting, detail, stopped=done, timed_out=waiting)


def cancel_remaining(store: Store, fleet: Fleet, report: StepReport) -> None:
    cancelled = []
    for job in live_jobs(store):
        if cancel(store, job, TEARDOWN_REASON):
            fleet.cancelled[job.job_id] = str(job.state)
            cancelled.append(job.job_id)
    report.record(
        "cancel the rest",
        True,
        f"{len(cancelled)} more job(s) cancelled, last checkpoints kept"
        if cancelled
        else "no job left running",
        cancelled=cancelled,
    )


# ---- providers ----------------------------------------------------------------------------------


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


# ---- cost ---------------------------------------------------------------------------------------


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


# ---- the whole teardown -------------------------------------------------------------------------


def teardown(
    settings: Settings,
    report: StepReport,
    only: str | None = None,
    checkpoint_timeout_s: float = 300.0,
    verify_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Run every step; returns the instances, cancelled jobs and cost as data."""
    store = reachable_store(settings)
    fleet = Fleet()
    if store is None:
        report.record(
            "redis",
            False,
            "unreachable: working from provider listings alone; jobs are not marked "
            "(run teardown again once Redis is back)",
        )
    else:
        stop_provisioning(store, fleet, report)
        checkpoint_training(store, report, checkpoint_timeout_s)
    names, live = configured_providers(settings, store, only)
    build_providers(settings, names, live, fleet, report)
    terminate_all(store, fleet, report)
    verify_gone(store, fleet, report, verify_timeout_s)
    if store is not None:
        cancel_remaining(store, fleet, report)
    cost = cost_summary(store, fleet)
    report.record(
        "cost",
        True,
        f"stopped {cost['usd_per_hour_stopped']:.2f} USD/h"
        + (f"; instances cost {cost['instances_usd']:.4f} USD" if store is not None else ""),
    )
    return {
        "instances": list(fleet.instances.values()),
        "cancelled_jobs": fleet.cancelled,
        "cost": cost,
    }


def teardown_command(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    provider: Annotated[
        str | None, typer.Option(help=f"Only this provider ({', '.join(KNOWN_PROVIDERS)}).")
    ] = None,
    checkpoint_timeout: Annotated[
        float, typer.Option(help="Seconds training may take to checkpoint before it is cut.")
    ] = 300.0,
    verify_timeout: Annotated[
        float, typer.Option(help="Seconds to keep terminating until the providers list none.")
    ] = 120.0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Stop provisioning, checkpoint, terminate every instance of ours, verify, print the cost."""
    if provider is not None and provider not in KNOWN_PROVIDERS:
        raise typer.BadParameter(f"unknown provider {provider!r}; one of {KNOWN_PROVIDERS}")
    if not yes:
        if json_out or not sys.stdin.isatty():
            raise typer.BadParameter("pass --yes to tear down without a prompt")
        typer.confirm("Terminate every saefleet instance and cancel every running job?", abort=True)
    settings = get_settings()
    log_to_file(settings)
    console = None if json_out else Console()
    report = StepReport(console)
    result = teardown(settings, report, provider, checkpoint_timeout, verify_timeout)
    if console is not None:
        console.print(cost_table(result["cost"]))
    report.finish(json_out, **result)


def main() -> None:
    """`ops/teardown`: the same command as `saefleet fleet teardown`."""
    run_script(teardown_command)


if __name__ == "__main__":
    main()
