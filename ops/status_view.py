"""`saefleet status` (and `sweep status`): the fleet at a glance.

One data model feeds both outputs: per job its state, attempt, instance, step and tokens, loss,
L0, tokens/s, ETA and cost so far; per sweep its spend against its budget; for the fleet the
instances by state and what they cost per hour. `fleet_status` builds it from Redis in a few
pipelined reads; `render` draws it with rich; `--json` prints it as is.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from queue_app.connection import get_store
from queue_app.records import InstanceRecord, JobRecord
from queue_app.settings import get_settings
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store

RECENT_SWEEPS = 10
STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "COST_CAPPED": "red",
    "CANCELLED": "magenta",
    "PREEMPTED": "yellow",
    "TRAINING": "cyan",
}


# ---- the data -----------------------------------------------------------------------------------


def fleet_status(
    store: Store, sweep_id: str | None = None, everything: bool = False, now: float | None = None
) -> dict[str, Any]:
    """The status model: `sweep_id` alone, else unfinished sweeps (the recent ones too with
    `everything`), with their jobs; the fleet always whole."""
    now = time.time() if now is None else now
    if sweep_id is not None:
        sweeps = [store.sweep(sweep_id)]
    else:
        sweeps = [store.sweep(s) for s in store.sweep_ids(limit=200)]
        sweeps = [s for s in sweeps if everything or s.finished_at is None][:RECENT_SWEEPS]
    instances = store.instances()
    jobs_by_sweep = {s.sweep_id: store.sweep_jobs(s.sweep_id) for s in sweeps}
    return {
        "at": now,
        "sweeps": [
            sweep_entry(
                sweep.model_dump(mode="json"), jobs_by_sweep[sweep.sweep_id], instances, now
            )
            for sweep in sweeps
        ],
        "fleet": fleet_entry(instances, now),
    }


def job_entry(job: JobRecord, instances: list[InstanceRecord], now: float) -> dict[str, Any]:
    p = job.progress
    tokens, total = p.get("tokens"), p.get("total_tokens")
    rate = p.get("tokens_per_s")
    training = job.state is JobState.TRAINING
    eta = (total - tokens) / rate if training and rate and tokens is not None and total else None
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": str(job.state),
        "attempt": job.attempt,
        "instance_id": job.instance_id,
        "step": p.get("step"),
        "tokens": tokens,
        "total_tokens": total,
        "loss": p.get("loss"),
        "l0": p.get("l0"),
        "tokens_per_s": rate,
        "eta_s": round(eta, 1) if eta is not None else None,
        "progress_age_s": round(now - p["updated_at"], 1) if "updated_at" in p else None,
        "cost_usd": round(sum(i.cost_usd(now) for i in instances if i.job_id == job.job_id), 6),
        "reason": job.reason,
    }


def sweep_entry(
    sweep: dict[str, Any], jobs: list[JobRecord], instances: list[InstanceRecord], now: float
) -> dict[str, Any]:
    mine = [i for i in instances if i.sweep_id == sweep["sweep_id"]]
    cost = sum(i.cost_usd(now) for i in mine)
    budget = sweep.get("budget_usd")
    return {
        "sweep_id": sweep["sweep_id"],
        "name": sweep["name"],
        "finished": sweep.get("finished_at") is not None,
        "summary_path": sweep.get("summary_path"),
        "states": dict(Counter(str(j.state) for j in jobs)),
        "cost_usd": round(cost, 6),
        "budget_usd": budget,
        "budget_used": round(cost / budget, 4) if budget else None,
        "jobs": [job_entry(j, mine, now) for j in jobs],
    }


def fleet_entry(instances: list[InstanceRecord], now: float) -> dict[str, Any]:
    live = [i for i in instances if i.state is not InstanceState.TERMINATED]
    by_provider: Counter[str] = Counter()
    for i in live:
        by_provider[i.provider] += 1
    return {
        "by_state": {s.value: sum(1 for i in instances if i.state is s) for s in InstanceState},
        "live": [
            {
                "instance_id": i.instance_id,
                "provider": i.provider,
                "job_id": i.job_id,
                "state": str(i.state),
                "instance_type": i.instance_type,
                "capacity": i.capacity,
                "usd_per_hour": i.price_per_hour,
                "hours": round(i.running_hours(now), 4),
                "cost_usd": round(i.cost_usd(now), 6),
            }
            for i in live
        ],
        "live_by_provider": dict(by_provider),
        "usd_per_hour": round(sum(i.price_per_hour for i in live), 4),
    }


# ---- the view -----------------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds / 3600:.1f}h"


def _state(state: str) -> str:
    colour = STATE_COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def sweep_table(sweep: dict[str, Any]) -> Table:
    budget = sweep["budget_usd"]
    spend = f"${sweep['cost_usd']:.2f}" + (
        f" of ${budget:.2f} ({100 * sweep['budget_used']:.0f}%)" if budget else " (no budget)"
    )
    done = "finished" if sweep["finished"] else "running"
    table = Table(title=f"sweep {sweep['sweep_id']} ({sweep['name']}): {done}, {spend}")
    columns = ("job", "name", "state", "att", "instance", "step", "tokens", "loss", "L0")
    for column in (*columns, "tok/s", "ETA", "cost $"):
        table.add_column(column, overflow="fold")
    for job in sweep["jobs"]:
        tokens = job["tokens"]
        total = job["total_tokens"]
        token_text = "-" if tokens is None else f"{tokens:,}" + (f"/{total:,}" if total else "")
        table.add_row(
            job["job_id"],
            job["name"],
            _state(job["state"]),
            str(job["attempt"]),
            job["instance_id"] or "-",
            _num(job["step"], "d"),
            token_text,
            _num(job["loss"], ".4g"),
            _num(job["l0"], ".1f"),
            _num(job["tokens_per_s"], ",.0f"),
            _duration(job["eta_s"]),
            f"{job['cost_usd']:.4f}",
        )
    return table


def fleet_table(fleet: dict[str, Any]) -> Table:
    states = ", ".join(f"{n} {s.lower()}" for s, n in fleet["by_state"].items() if n)
    table = Table(title=f"fleet: {states or 'no instances'}; ${fleet['usd_per_hour']:.2f}/h")
    for column in ("instance", "provider", "job", "state", "type", "capacity", "$/h", "up", "$"):
        table.add_column(column, overflow="fold")
    for i in fleet["live"]:
        table.add_row(
            i["instance_id"],
            i["provider"],
            i["job_id"],
            i["state"],
            i["instance_type"] or "-",
            i["capacity"] or "-",
            f"{i['usd_per_hour']:.2f}",
            _duration(i["hours"] * 3600),
            f"{i['cost_usd']:.4f}",
        )
    return table


def render(status: dict[str, Any]) -> Group:
    parts: list[Any] = [sweep_table(s) for s in status["sweeps"]]
    if not status["sweeps"]:
        parts.append("no unfinished sweep (--all shows recent ones)")
    parts.append(fleet_table(status["fleet"]))
    return Group(*parts)


# ---- the command --------------------------------------------------------------------------------


def status_command(
    sweep: Annotated[str | None, typer.Option(help="Only this sweep.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Recent finished sweeps too.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Jobs (progress, loss, L0, tokens/s, ETA, cost), sweeps (spend vs budget), fleet ($/h)."""
    show(get_store(get_settings()), sweep, all_, watch, interval, json_out)


def show(
    store: Store,
    sweep_id: str | None,
    everything: bool,
    watch: bool,
    interval: float,
    json_out: bool,
) -> None:
    """Print the status once, or keep refreshing it (JSON: one object per line)."""
    if json_out:
        while True:
            sys.stdout.write(json.dumps(fleet_status(store, sweep_id, everything)) + "\n")
            sys.stdout.flush()
            if not watch:
                return
            time.sleep(interval)
    console = Console()
    if not watch:
        console.print(render(fleet_status(store, sweep_id, everything)))
        return
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        while True:
            live.update(render(fleet_status(store, sweep_id, everything)))
            time.sleep(interval)
