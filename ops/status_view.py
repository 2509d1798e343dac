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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobs.job_cost import costs_by_job, sweep_cost_usd
from ops.views import fmt_duration, grid_label, job_suffix, short_ids, state_markup, terminal
from queue_app.connection import get_store
from queue_app.records import InstanceRecord, JobRecord
from queue_app.settings import get_settings
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store

RECENT_SWEEPS = 10
WIDE_MAX_COLUMNS = 1000


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


def job_entry(job: JobRecord, cost_usd: float, now: float) -> dict[str, Any]:
    p = job.progress
    tokens, total = p.get("tokens"), p.get("total_tokens")
    rate = p.get("tokens_per_s")
    training = job.state is JobState.TRAINING
    eta = (total - tokens) / rate if training and rate and tokens is not None and total else None
    return {
        "job_id": job.job_id,
        "index": job.index,
        "name": job.name,
        "overrides": job.job_spec.overrides,
        "state": str(job.state),
        "attempt": job.attempt,
        "instance_id": job.instance_id,
        "pack_id": job.pack_id,
        "step": p.get("step"),
        "tokens": tokens,
        "total_tokens": total,
        "loss": p.get("loss"),
        "l0": p.get("l0"),
        "tokens_per_s": rate,
        "eta_s": round(eta, 1) if eta is not None else None,
        "progress_age_s": round(now - p["updated_at"], 1) if "updated_at" in p else None,
        "cost_usd": round(cost_usd, 6),
        "reason": job.reason,
    }


def sweep_entry(
    sweep: dict[str, Any], jobs: list[JobRecord], instances: list[InstanceRecord], now: float
) -> dict[str, Any]:
    job_usd = costs_by_job((i for i in instances if i.sweep_id == sweep["sweep_id"]), now)
    cost = sweep_cost_usd((j.job_id for j in jobs), job_usd)
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
        "jobs": [job_entry(j, job_usd.get(j.job_id, 0.0), now) for j in jobs],
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
# Fits 80 columns (as `sky status` and `dstack ps` do): short ids and the columns an operator
# reads at a glance; `--wide` adds the rest, and `--json` has every field.


@dataclass(frozen=True)
class Column:
    """One column of a status table: its header and how a row's cell reads."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    shown: Literal["always", "narrow", "wide"] = "always"
    """`narrow`: only without --wide (a short form of a wide column); `wide`: only with it."""
    right: bool = False
    """Right-justified (numbers)."""
    cut: bool = False
    """Narrows first when the terminal is too narrow, its cells cut short with … (never
    wrapped); the other columns keep their width."""


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _tokens(job: dict[str, Any]) -> str:
    tokens, total = job["tokens"], job["total_tokens"]
    return "-" if tokens is None else f"{tokens:,}" + (f"/{total:,}" if total else "")


def _done(job: dict[str, Any]) -> str:
    tokens, total = job["tokens"], job["total_tokens"]
    return "-" if tokens is None or not total else f"{100 * tokens / total:.0f}%"


JOB_COLUMNS = (
    Column("job", lambda j: j["short_id"], "narrow"),
    Column("job", lambda j: j["job_id"], "wide"),
    Column("grid", lambda j: grid_label(j["overrides"], j["name"]), "narrow", cut=True),
    Column("name", lambda j: j["name"], "wide"),
    Column("state", lambda j: state_markup(j["state"])),
    Column("att", lambda j: str(j["attempt"]), right=True),
    Column("instance", lambda j: j["instance_id"] or "-", "wide"),
    Column("pack", lambda j: j["pack_id"] or "-", "wide"),
    Column("step", lambda j: _num(j["step"], "d"), "wide", right=True),
    Column("tokens", _tokens, "wide", right=True),
    Column("done", _done, right=True),
    Column("loss", lambda j: _num(j["loss"], ".4g"), right=True),
    Column("L0", lambda j: _num(j["l0"], ".1f"), right=True),
    Column("tok/s", lambda j: _num(j["tokens_per_s"], ",.0f"), "wide", right=True),
    Column("ETA", lambda j: fmt_duration(j["eta_s"]), right=True),
    Column("updated", lambda j: fmt_duration(j["progress_age_s"]), "wide", right=True),
    Column("cost $", lambda j: f"{j['cost_usd']:.2f}", "narrow", right=True),
    Column("cost $", lambda j: f"{j['cost_usd']:.4f}", "wide", right=True),
    Column("reason", lambda j: j["reason"] or "", "wide"),
)

FLEET_COLUMNS = (
    Column("instance", lambda i: i["short_id"], "narrow"),
    Column("instance", lambda i: i["instance_id"], "wide"),
    Column("provider", lambda i: i["provider"], "wide"),
    Column("job", lambda i: i["job_id"]),
    Column("state", lambda i: i["state"]),
    Column("type", lambda i: i["instance_type"] or "-", cut=True),
    Column("capacity", lambda i: i["capacity"] or "-", "wide"),
    Column("$/h", lambda i: f"{i['usd_per_hour']:.2f}", right=True),
    Column("up", lambda i: fmt_duration(i["hours"] * 3600), right=True),
    Column("cost $", lambda i: f"{i['cost_usd']:.2f}", "narrow", right=True),
    Column("cost $", lambda i: f"{i['cost_usd']:.4f}", "wide", right=True),
)


def _table(
    title: str, columns: tuple[Column, ...], rows: list[dict[str, Any]], wide: bool
) -> Table:
    """Borderless, one line per row; a column that must narrow cuts its cells short."""
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    shown = [c for c in columns if c.shown == "always" or (c.shown == "wide") == wide]
    for column in shown:
        table.add_column(
            column.header, justify="right" if column.right else "left", no_wrap=not column.cut
        )
    for row in rows:
        table.add_row(*(_cell(column, row) for column in shown))
    return table


def _cell(column: Column, row: dict[str, Any]) -> str | Text:
    text = column.cell(row)
    return Text(text, no_wrap=True, overflow="ellipsis") if column.cut else text


def sweep_table(sweep: dict[str, Any], wide: bool = False) -> Table:
    budget = sweep["budget_usd"]
    spend = f"${sweep['cost_usd']:.2f}" + (
        f" of ${budget:.2f} ({100 * sweep['budget_used']:.0f}%)" if budget else " (no budget)"
    )
    done = "finished" if sweep["finished"] else "running"
    title = f"sweep {sweep['sweep_id']} ({sweep['name']}): {done}, {spend}"
    rows = [j | {"short_id": job_suffix(j["job_id"], sweep["sweep_id"])} for j in sweep["jobs"]]
    return _table(title, JOB_COLUMNS, rows, wide)


def fleet_table(fleet: dict[str, Any], wide: bool = False) -> Table:
    states = ", ".join(f"{n} {s.lower()}" for s, n in fleet["by_state"].items() if n)
    title = f"fleet: {states or 'no instances'}; ${fleet['usd_per_hour']:.2f}/h"
    short = short_ids(i["instance_id"] for i in fleet["live"])
    rows = [i | {"short_id": short[i["instance_id"]]} for i in fleet["live"]]
    return _table(title, FLEET_COLUMNS, rows, wide)


def render(status: dict[str, Any], wide: bool = False) -> Group:
    parts: list[Any] = [sweep_table(s, wide) for s in status["sweeps"]]
    if not status["sweeps"]:
        parts.append("no unfinished sweep (--all shows recent ones)")
    parts.append(fleet_table(status["fleet"], wide))
    return Group(*parts)


# ---- the command --------------------------------------------------------------------------------


def status_command(
    sweep: Annotated[str | None, typer.Option(help="Only this sweep.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Recent finished sweeps too.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide", help="Every column and full ids (instance, tokens, tok/s, reason...)."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Jobs (progress, loss, L0, ETA, cost), sweeps (spend vs budget), fleet ($/h)."""
    show(get_store(get_settings()), sweep, all_, watch, interval, json_out, wide)


def show(
    store: Store,
    sweep_id: str | None,
    everything: bool,
    watch: bool,
    interval: float,
    json_out: bool,
    wide: bool = False,
) -> None:
    """Print the status once, or keep refreshing it (JSON: one object per line)."""
    if json_out:
        while True:
            sys.stdout.write(json.dumps(fleet_status(store, sweep_id, everything)) + "\n")
            sys.stdout.flush()
            if not watch:
                return
            time.sleep(interval)
    console = terminal()
    if not watch:
        print_status(console, render(fleet_status(store, sweep_id, everything), wide), wide)
        return
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        while True:  # refreshed in place, so cut to the terminal even when wide
            live.update(render(fleet_status(store, sweep_id, everything), wide))
            time.sleep(interval)


def print_status(console: Console, view: Group, wide: bool) -> None:
    """Print the view; a wide one is never cut to the terminal (its long lines wrap there)."""
    if wide:
        unbounded = console.options.update_width(WIDE_MAX_COLUMNS)
        needed = console.measure(view, options=unbounded).maximum
        console.size = (max(console.width, needed), console.height)
    console.print(view)
