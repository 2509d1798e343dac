"""Human views of sweeps, jobs and instances (rich tables) and their JSON forms for scripts, and
the pieces every table shares: short ids, a job's grid values, durations, coloured states."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from jobs.job_cost import job_cost_usd
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord, SweepRecord
from queue_app.store import Store

STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "COST_CAPPED": "red",
    "CANCELLED": "magenta",
    "PREEMPTING": "yellow",
    "PREEMPTED": "yellow",
    "PAUSED": "blue",
    "TRAINING": "cyan",
}


def terminal(stderr: bool = False, **options: Any) -> Console:
    """A Rich console that prints names, paths and messages as they are: no emoji codes (a sweep
    key `:v:` stays `:v:`, not ✌). Callers escape markup in what they did not write."""
    return Console(stderr=stderr, emoji=False, **options)


def state_markup(state: str) -> str:
    colour = STATE_COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds / 3600:.1f}h"


def short_ids(ids: Iterable[str], min_len: int = 10) -> dict[str, str]:
    """Each id cut to its shortest prefix of at least `min_len` characters that no other of
    `ids` starts with (as git shortens hashes): unique within what is shown."""
    ordered = sorted(set(ids))
    out = {}
    for i, this in enumerate(ordered):
        neighbours = ordered[max(0, i - 1) : i] + ordered[i + 1 : i + 2]
        shared = max((_common_prefix_len(this, n) for n in neighbours), default=0)
        out[this] = this[: max(min_len, shared + 1)]
    return out


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def job_suffix(job_id: str, sweep_id: str) -> str:
    """What tells a job apart within its sweep: its id after the sweep's (`0003`)."""
    return job_id.removeprefix(f"{sweep_id}-")


def grid_label(overrides: Mapping[str, Any], fallback: str) -> str:
    """A job's grid values, short: `k=16,lr=0.0001` for {"sae.k": 16, "train.lr": 1e-4} (the
    last part of each path, the whole path where two end alike); `fallback` without a grid."""
    last = [path.rsplit(".", 1)[-1] for path in overrides]
    keys = [k if last.count(k) == 1 else path for k, path in zip(last, overrides, strict=True)]
    label = ",".join(f"{k}={v}" for k, v in zip(keys, overrides.values(), strict=True))
    return label or fallback


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
            state_markup(str(job.state)),
            str(job.attempt),
            job.instance_id or "-",
            job_progress(job),
            f"{p['loss']:.4g}" if "loss" in p else "-",
            f"{p['l0']:.1f}" if "l0" in p else "-",
            f"{job_cost_usd(store, job.job_id):.4f}",
        )
    return table


def sweep_json(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    jobs = store.sweep_jobs(sweep.sweep_id)
    return {
        "sweep_id": sweep.sweep_id,
        "name": sweep.name,
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
        "budget_usd": sweep.budget_usd,
        "cost_usd": round(sum(job_cost_usd(store, j.job_id) for j in jobs), 6),
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
        "pack_id": job.pack_id,
        "reason": job.reason,
        "progress": job.progress,
        "metrics": job.metrics,
        "cost_usd": round(job_cost_usd(store, job.job_id), 6),
        "latest_checkpoint": job.latest_checkpoint,
        "artifacts_dir": job.artifacts_dir,
    }
    if detail:
        out["members"] = job.members
        out["micro_batch_halvings"] = job.micro_batch_halvings
        out["lm_batch_halvings"] = job.lm_batch_halvings
        out["gpu_memory_above_gb"] = job.gpu_memory_above_gb
        out["config"] = job.job_spec.config.model_dump(mode="json", exclude_unset=True)
        out["attempts"] = [a.model_dump(mode="json") for a in store.attempts(job.job_id)]
        out["events"] = store.events(job.job_id)
    return out


def pack_line(store: Store, job: JobRecord) -> str:
    """The pack a job trains in (or a pack job's members), one line."""
    pack = store.job(job.pack_id) if job.pack_id else job
    members = ", ".join(f"{m.job_id} ({m.state})" for m in store.jobs(pack.members))
    return f"pack: {pack.job_id} ({pack.state}, attempt {pack.attempt}); members: {members}"


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
        "notice hand-off",
        "out of memory",
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
            _handoff(a),
            "; ".join(a.out_of_memory) or "-",
            f"{cost:.4f}",
        )
    return table


def _handoff(attempt: AttemptRecord) -> str:
    """A noticed attempt's checkpoint hand-off to the next one (jobs.notice_handoff)."""
    if attempt.handoff is None:
        return "-"
    detail = attempt.handoff_checkpoint or attempt.handoff_note
    return f"{attempt.handoff} ({detail})" if detail else str(attempt.handoff)


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
