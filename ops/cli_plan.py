"""`saefleet plan FILE [--json]`: what a sweep would run on and what it would cost.

Live Lambda prices and capacity when an API key is configured (LAMBDA_API_KEY or
SAEFLEET_LAMBDA_API_KEY_FILE), else the dated built-in catalog with a stale warning; the local
provider is priced with the sweep's own `price_per_hour`.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from jobs.plan_models import SweepPlan
from jobs.planner import plan_sweep
from jobs.providers.errors import AuthError
from jobs.providers.lambda_cloud import LambdaCloud, from_settings, read_api_key
from jobs.spec import SpecError, SweepSpec, load_sweep_file
from ops.views import terminal
from queue_app.settings import get_settings

if TYPE_CHECKING:
    from jobs.providers.aws import AWSProvider

EXIT_OK = 0
EXIT_BAD_INPUT = 2
PLAIN_WIDTH = 140


def plan_command(file: Path, json_out: bool) -> int:
    """Print the plan of sweep file `file` (a table, or JSON); returns the exit code."""
    try:
        spec = load_sweep_file(file)
        with ExitStack() as stack:
            provider, notes = _live_provider(spec)
            if provider is not None:
                stack.callback(provider.close)
            plan = plan_sweep(spec, provider)
    except SpecError as exc:
        print(f"error: {'; '.join(str(exc).splitlines())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if json_out:
        print(json.dumps(plan.model_dump(mode="json"), indent=2))
    else:
        print_plan(plan, notes)
    return EXIT_OK


def _live_provider(spec: SweepSpec) -> tuple[LambdaCloud | AWSProvider | None, list[str]]:
    """A Lambda client when the sweep runs on Lambda and a key is configured; an AWS one
    for AWS (without credentials its prices fail over to the catalog, with a warning)."""
    if spec.provider.name == "aws":
        from jobs.providers.aws import AWSProvider

        return AWSProvider.from_spec(spec.provider), []
    if spec.provider.name != "lambda":
        return None, []
    settings = get_settings()
    try:
        if read_api_key(settings) is None:
            return None, []
        return from_settings(settings), []
    except AuthError as exc:
        return None, [f"{exc}; using the built-in catalog"]


def print_plan(plan: SweepPlan, notes: list[str] | None = None) -> None:
    """The plan for people: warnings, the candidate table, the pick and the totals."""
    console = terminal(highlight=False)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH
    jobs = len(plan.jobs)
    console.print(
        f"Plan for sweep [bold]{plan.sweep}[/bold]: {jobs} job{'s' * (jobs != 1)} on "
        f"{plan.provider}, {plan.capacity.replace('_', '-')}, prices: {plan.price_source}"
    )
    dates = [f"prices as of {plan.prices_as_of}"] if plan.prices_as_of else []
    if plan.preemption_rates_as_of:
        dates.append(f"spot preemption rates as of {plan.preemption_rates_as_of}")
    if dates:
        console.print(f"{'; '.join(dates).capitalize()}.")
    for warning in [*(notes or []), *plan.warnings]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    console.print(_candidates_table(plan))
    if len(plan.jobs) > 1:
        console.print(_jobs_table(plan))
    if plan.pick is not None:
        console.print(
            f"Pick: {plan.pick.instance_type} in {plan.pick.region} at "
            f"${plan.pick.price_per_hour:.2f}/h (then the next cheapest on no capacity)"
        )
    else:
        console.print("Pick: none has capacity now; submit would wait for capacity")
    console.print(_totals(plan))
    if plan.packs:
        console.print(_packs_table(plan))
        console.print(_packed_totals(plan))
    if plan.jobs:
        console.print(f"Throughput: {plan.jobs[0].basis}", soft_wrap=True)
    refusal = plan.budget_refusal()
    if refusal:
        console.print(f"[red]Over budget:[/red] {refusal}", soft_wrap=True)


def _candidates_table(plan: SweepPlan) -> Table:
    """One row per type; with spot prices, spot's price and its expected price per hour of
    progress (preemptions weighed, where the provider has a rate table) beside on-demand's."""
    spot = any(row.spot_price_per_hour is not None for row in plan.candidates)
    prices = ("$/h", "spot $/h", "spot exp. $/h") if spot else ("$/h",)
    columns = ("type", "GPU", "GB", *prices, "regions", "tokens/s", "h/job", "$/job", "$ sweep")
    table = Table(title="Instance types that fit every job, cheapest first (on-demand $)")
    for column in columns:
        text = column in ("type", "GPU", "regions")
        table.add_column(column, justify="left" if text else "right")
    for row in plan.candidates:
        spot_cells = [
            _number(row.spot_price_per_hour, "{:.2f}"),
            _number(row.expected_spot_price_per_hour, "{:.2f}"),
        ]
        table.add_row(
            row.instance_type,
            row.description,
            f"{row.gpu_memory_gb:g}",
            f"{row.price_per_hour:.2f}",
            *(spot_cells if spot else []),
            ", ".join(row.regions) or "no capacity",
            _number(row.tokens_per_s, "{:,.0f}"),
            _number(row.hours_per_job, "{:.2f}"),
            _number(row.cost_per_job_usd, "{:.2f}"),
            _number(row.sweep_cost_usd, "{:.2f}"),
        )
    return table


def _jobs_table(plan: SweepPlan) -> Table:
    table = Table(title="Jobs on their pick")
    for column in ("#", "job", "type", "tokens", "h", "$"):
        table.add_column(column, justify="left" if column in ("job", "type") else "right")
    for job in plan.jobs:
        table.add_row(
            str(job.index),
            job.name,
            job.instance_type or "none fits",
            f"{job.total_tokens:,}",
            _number(job.hours, "{:.2f}"),
            _number(job.cost_usd, "{:.2f}"),
        )
    return table


def _totals(plan: SweepPlan) -> str:
    budget = "no budget_usd" if plan.budget_usd is None else f"budget ${plan.budget_usd:.2f}"
    if plan.estimated_cost_usd is None or plan.estimated_hours is None:
        return f"Estimate: not available (see the warnings); {budget}"
    return (
        f"Estimate: {plan.estimated_hours:.2f} instance-hours, ${plan.estimated_cost_usd:.2f} "
        f"for the sweep (setup {plan.setup_hours_per_job:.2f} h a job included); {budget}"
    )


def _packs_table(plan: SweepPlan) -> Table:
    table = Table(title=f"Packs (jobs sharing one LM forward; max_pack_size {plan.max_pack_size})")
    for column in ("jobs", "layers", "GPU GB", "type", "h", "$", "split because"):
        table.add_column(column, justify="right" if column in ("GPU GB", "h", "$") else "left")
    for pack in plan.packs:
        table.add_row(
            ", ".join(map(str, pack.jobs)),
            ", ".join(map(str, pack.layers)),
            _number(pack.memory_gb, "{:.1f}"),
            pack.instance_type or "none fits",
            _number(pack.hours, "{:.2f}"),
            _number(pack.cost_usd, "{:.2f}"),
            pack.split or "",
        )
    return table


def _packed_totals(plan: SweepPlan) -> str:
    if plan.packed_hours is None or plan.packed_cost_usd is None:
        return "Packed: not estimated (see the warnings)"
    line = (
        f"Packed: {len(plan.packs)} instance(s), {plan.packed_hours:.2f} instance-hours, "
        f"${plan.packed_cost_usd:.2f}"
    )
    if plan.estimated_hours is not None and plan.estimated_cost_usd is not None:
        line += (
            f" (one job per instance: {len(plan.jobs)} instance(s), "
            f"{plan.estimated_hours:.2f} instance-hours, ${plan.estimated_cost_usd:.2f})"
        )
    if plan.packing:
        return line + "; the fleet runs these packs, and the budget check uses this estimate"
    return line + "; max_pack_size 1: the fleet runs one job per instance, the budget check too"


def _number(value: float | None, fmt: str) -> str:
    return "?" if value is None else fmt.format(value)
