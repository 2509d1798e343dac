"""Tear the fleet down: nothing of ours is left billing (`ops/teardown`, `saefleet fleet teardown`).

Steps, each printed as it happens:
    1. stop provisioning    new sweeps are refused (the drained flag); jobs that hold no training
                            run (queued, provisioning, booting, verifying, bootstrapping,
                            preempted, paused by a drain) are CANCELLED with their newest
                            checkpoint kept, so no stage launches another instance
    2. checkpoint           training jobs get the stop flag and checkpoint at their next step;
                            teardown pulls each checkpoint into the store itself (whatever the
                            queue's drain state: no worker is needed) and cancels the job
                            (bounded by --checkpoint-timeout; a segment still training then is
                            reported lost, by name)
    3. terminate            every instance of ours at every configured provider (those recorded
                            live in Redis and those the provider lists with our name prefix)
    4. verify               list again at each provider until none remains; report exactly which
                            did not go
    5. cancel the rest      jobs still running (e.g. collecting) are CANCELLED; each report names
                            the checkpoint it kept, or says there was none
    6. cost                 what the affected sweeps and instances cost

Exit 0 when every instance is gone and every trained segment's checkpoint is kept; 1 when
something could not be, and the failed step says what. Idempotent: "already gone" is success
and a second run finds nothing to do. It needs only Redis and the provider APIs (no Celery
worker); without Redis it works from the provider listings alone and says which steps it could
not do.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import redis
import typer

from ops.steps import StepReport, log_to_file, run_script
from ops.stopping import cancel_job, stop_training
from ops.teardown_providers import (
    Fleet,
    build_providers,
    configured_providers,
    cost_summary,
    cost_table,
    terminate_all,
    verify_gone,
)
from ops.views import terminal
from queue_app.admission import set_drained
from queue_app.connection import connect
from queue_app.records import JobRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import INSTANCE_STATES, JobState
from queue_app.store import Store

KNOWN_PROVIDERS = ("local", "lambda")
NOT_TRAINING = INSTANCE_STATES - {JobState.TRAINING} | {
    JobState.QUEUED,
    JobState.PREEMPTED,
    JobState.PAUSED,
}
TEARDOWN_REASON = "torn down (ops/teardown)"


def reachable_store(settings: Settings) -> Store | None:
    """A Store when Redis answers now, else None (teardown then works from provider lists)."""
    try:
        store = connect(settings.broker_url)
        store.r.ping()
        return store
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None


def live_jobs(store: Store) -> list[JobRecord]:
    """Every job not yet ended, a pack's members before their pack (each member is cancelled
    naming its own checkpoint, not the pack's)."""
    live = [j for j in store.jobs(store.job_ids(limit=100_000)) if not j.terminal]
    return sorted(live, key=lambda job: bool(job.members))


def stop_provisioning(store: Store, fleet: Fleet, report: StepReport) -> None:
    from queue_app.celery_app import CONTROL_QUEUE, WATCHDOG_QUEUE

    # Control-plane queues stay consumed (a restarted worker too): cancelled jobs still run
    # their chains to `terminate` and the finalizer, and the watchdog keeps reaping.
    set_drained(store.r, "teardown", {}, keep=[CONTROL_QUEUE, WATCHDOG_QUEUE])
    kept = {}
    for job in (j for j in live_jobs(store) if j.state in NOT_TRAINING):
        cancelled = cancel_job(store, job.job_id, TEARDOWN_REASON)
        if cancelled is not None:
            fleet.cancelled[job.job_id] = str(job.state)
            kept[job.job_id] = cancelled.latest_checkpoint or ""
    report.record(
        "stop provisioning",
        True,
        f"new sweeps refused; {len(kept)} job(s) not training cancelled"
        + (f"; checkpoints kept: {_checkpoints(kept)}" if kept else ""),
        cancelled=sorted(kept),
    )


def checkpoint_training(
    store: Store, settings: Settings, fleet: Fleet, report: StepReport, timeout_s: float
) -> None:
    """Stop every training job with its newest checkpoint kept (ops.stopping)."""
    stop = stop_training(store, settings, report, TEARDOWN_REASON, timeout_s)
    fleet.cancelled.update({job_id: str(JobState.TRAINING) for job_id in stop.cancelled})
    if not (stop.cancelled or stop.ended or stop.lost):
        report.record("checkpoint", True, "no job was training")
        return
    kept = {job_id: name for job_id, name in stop.cancelled.items() if job_id not in stop.lost}
    parts = [f"{len(stop.cancelled)} training job(s) stopped and cancelled"]
    if kept:
        parts.append("newest checkpoints kept: " + _checkpoints(kept))
    if stop.ended:
        parts.append("ended by the control plane: " + _listing(stop.ended))
    if stop.lost:
        parts.append("NOT kept: " + _listing(stop.lost))
    report.record(
        "checkpoint",
        not stop.lost,
        "; ".join(parts),
        kept=kept,
        lost=stop.lost,
    )


def cancel_remaining(store: Store, fleet: Fleet, report: StepReport) -> None:
    kept = {}
    for job in live_jobs(store):
        cancelled = cancel_job(store, job.job_id, TEARDOWN_REASON)
        if cancelled is not None:
            fleet.cancelled[job.job_id] = str(job.state)
            kept[job.job_id] = cancelled.latest_checkpoint or ""
    report.record(
        "cancel the rest",
        True,
        f"{len(kept)} more job(s) cancelled; checkpoints kept: {_checkpoints(kept)}"
        if kept
        else "no job left running",
        cancelled=sorted(kept),
    )


def _checkpoints(kept: dict[str, str]) -> str:
    return ", ".join(f"{job_id} {name or '(none taken yet)'}" for job_id, name in kept.items())


def _listing(what: dict[str, str]) -> str:
    return "; ".join(f"{job_id}: {detail}" for job_id, detail in what.items())


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
        checkpoint_training(store, settings, fleet, report, checkpoint_timeout_s)
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
    console = None if json_out else terminal()
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
