"""Human views of sweeps, jobs and instances (rich tables) and their JSON forms for scripts."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.store import Store


def fmt_age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    seconds = max(0, int((now or time.time()) - ts))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds / 3600:.1f}h"


def job_cost(store: Store, job: JobRecord) -> float:
    return sum(
        store.instance(a.instance_id).cost_usd()
        for a in store.attempts(job.job_id)
        if a.instance_id
    )


def job_progress(job: JobRecord) -> str:
    p = job.progress
    if not p:
        return "-"
    tokens, total = p.get("tokens"), p.get("total_tokens")
    text = f"step {p.get('step', '?')}"
    if tokens is not None and total:
        text += f", {100 * tokens / total:.0f}% of {total:,} tok"
    return text


def jobs_table(store: Store, jobs: list[JobRecord], title: str = "jobs") -> Table:
    table = Table(title=title)
    for column in ("job", "name", "state", "att", "instance", "progress", "loss", "L0", "cost $"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        p = job.progress
        table.add_row(
            job.job_id,
            job.name,
            _state_text(job),
            str(job.attempt),
            job.instance_id or "-",
            job_progress(job),
            f"{p['loss']:.4g}" if "loss" in p else "-",
            f"{p['l0']:.1f}" if "l0" in p else "-",
            f"{job_cost(store, job):.4f}",
        )
    return table


def _state_text(job: JobRecord) -> str:
    colour = {"SUCCEEDED": "green", "FAILED": "red", "PREEMPTED": "yellow"}.get(str(job.state))
    return f"[{colour}]{job.state}[/]" if colour else str(job.state)


def sweep_json(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    jobs = store.sweep_jobs(sweep.sweep_id)
    return {
        "sweep_id": sweep.sweep_id,
        "name": sweep.name,
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
        "budget_usd": sweep.budget_usd,
        "cost_usd": round(sum(job_cost(store, j) for j in jobs), 6),
        "summary_path": sweep.summary_path,
        "jobs": [job_json(store, j) for j in jobs],
    }


def job_json(store: Store, job: JobRecord, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "sweep_id": job.sweep_id,
        "name": job.name,
        "state": str(job.state),
        "attempt": job.attempt,
        "instance_id": job.instance_id,
        "reason": job.reason,
        "progress": job.progress,
        "metrics": job.metrics,
        "cost_usd": round(job_cost(store, job), 6),
        "latest_checkpoint": job.latest_checkpoint,
        "artifacts_dir": job.artifacts_dir,
    }
    if detail:
        out["config"] = job.job_spec.config.model_dump(mode="json", exclude_unset=True)
        out["attempts"] = [a.model_dump(mode="json") for a in store.attempts(job.job_id)]
        out["events"] = store.events(job.job_id)
    return out


def attempts_table(store: Store, job: JobRecord) -> Table:
    table = Table(title=f"attempts of {job.job_id}")
    for column in (
        "#",
        "instance",
        "capacity",
        "started",
        "ended",
        "reason",
        "resumed from",
        "cost $",
    ):
        table.add_column(column, overflow="fold")
    for a in store.attempts(job.job_id):
        cost = store.instance(a.instance_id).cost_usd() if a.instance_id else 0.0
        table.add_row(
            str(a.attempt),
            a.instance_id or "-",
            a.capacity or "-",
            time.strftime("%H:%M:%S", time.localtime(a.started_at)),
            time.strftime("%H:%M:%S", time.localtime(a.ended_at)) if a.ended_at else "-",
            a.end_reason or a.waiting_for or "-",
            a.resume_from or "-",
            f"{cost:.4f}",
        )
    return table


def instances_table(instances: list[InstanceRecord]) -> Table:
    table = Table(title="fleet")
    for column in (
        "instance",
        "provider",
        "job",
        "att",
        "state",
        "type",
        "capacity",
        "$/h",
        "up",
        "cost $",
    ):
        table.add_column(column, overflow="fold")
    for i in instances:
        table.add_row(
            i.instance_id,
            i.provider,
            i.job_id,
            str(i.attempt),
            str(i.state),
            i.instance_type or "-",
            i.capacity or "-",
            f"{i.price_per_hour:.2f}",
            f"{i.running_hours():.2f}h",
            f"{i.cost_usd():.4f}",
        )
    return table
