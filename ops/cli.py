"""The `saefleet` command. Exit codes: 0 ok, 1 failure, 2 bad input (a message names it)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import redis
import typer
from rich.markup import escape

from jobs.objectstore import StoreConfigError, StoreError
from jobs.results import SweepSummary
from jobs.spec import SpecError, load_sweep_file
from ops import controlplane
from ops.bench.preemption import bench_preemption_command
from ops.bench.runner import bench_queue_command
from ops.bench.store import bench_store_command
from ops.cli_common import (
    JsonFlag,
    SweepFile,
    WideFlag,
    console,
    emit_json,
    err,
    fail,
    print_error,
    store,
)
from ops.cli_fleet import fleet_app
from ops.errors import BadInput, PublishFailed, PublishRefused
from ops.views import (
    attempts_table,
    job_json,
    jobs_table,
    pack_line,
    sweep_json,
)
from queue_app.admission import QueueDrained
from queue_app.errors import NotFoundError
from queue_app.settings import get_settings
from queue_app.statemachine import JobState

app = typer.Typer(help="Run sweeps of SAE training jobs on rented GPUs.", no_args_is_help=True)
sweep_app = typer.Typer(help="Submit and follow sweeps.", no_args_is_help=True)
jobs_app = typer.Typer(help="List jobs.", no_args_is_help=True)
job_app = typer.Typer(help="One job.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
app.add_typer(jobs_app, name="jobs")
app.add_typer(job_app, name="job")
app.add_typer(fleet_app, name="fleet")

# ---- control plane ------------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start the control plane (Redis, control worker, beat, tunnels) unless it runs already."""
    settings = get_settings()
    report = controlplane.up(settings)
    for name, what in report.items():
        console.print(f"{name:8} {what}")
    console.print(f"logs in {settings.logs_dir}")


@app.command()
def down() -> None:
    """Stop the control plane cleanly (instances are not touched: see `fleet teardown`)."""
    for name, what in controlplane.down(get_settings()).items():
        console.print(f"{name:8} {what}")


# ---- sweeps -------------------------------------------------------------------------------------


@sweep_app.command("submit")
def sweep_submit(
    file: SweepFile,
    wait: Annotated[bool, typer.Option(help="Follow the sweep until it finishes.")] = False,
    force: Annotated[bool, typer.Option(help="Submit even when over budget.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Validate a sweep file, check its cost and credentials, enqueue its jobs."""
    from jobs.submission import SubmitRefused, check_submission, submit_sweep

    spec = load_sweep_file(file)
    jobs = spec.expand()
    try:
        plan, preflight = check_submission(spec, get_settings(), force=force)
    except SubmitRefused as exc:
        raise BadInput(str(exc)) from None
    if not json_out:
        for line in preflight.lines():
            if not line.startswith("PASSED"):
                err.print(f"[yellow]note:[/] {escape(line)}", highlight=False)
        if plan.fleet_cost_usd is not None:
            console.print(f"estimated cost: ${plan.fleet_cost_usd:.2f}")
    sweep = submit_sweep(spec, jobs, store(), plan)
    if json_out and not wait:
        emit_json({"sweep_id": sweep.sweep_id, "jobs": sweep.job_ids})
        return
    console.print(f"sweep [bold]{sweep.sweep_id}[/] ({spec.name}): {len(jobs)} jobs queued")
    if wait:
        follow_sweep(sweep.sweep_id, json_out)


@sweep_app.command("status")
def sweep_status(sweep_id: str, json_out: JsonFlag = False, wide: WideFlag = False) -> None:
    """Where each job of a sweep stands."""
    s = store()
    sweep = s.sweep(sweep_id)
    if json_out:
        emit_json(sweep_json(s, sweep))
        return
    from ops.status_view import fleet_status, print_status, render

    print_status(console, render(fleet_status(s, sweep_id), wide), wide)
    if sweep.finished_at:
        console.print(f"finished; summary: {sweep.summary_path}")


@sweep_app.command("wait")
def sweep_wait(sweep_id: str, json_out: JsonFlag = False) -> None:
    """Follow a sweep until it finishes; exit 1 unless every job succeeded."""
    follow_sweep(sweep_id, json_out)


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: str) -> None:
    """Cancel every unfinished job of a sweep, and its packs (their instances are terminated)."""
    from ops.stopping import cancel_job

    s = store()
    sweep = s.sweep(sweep_id)  # an unknown sweep is bad input, not "0 cancelled"
    reason = "cancelled by user"
    unfinished = {j.job_id for j in s.sweep_jobs(sweep_id) if not j.terminal}
    for job_id in [*sweep.pack_ids, *unfinished]:  # a pack job's members go with it
        cancel_job(s, job_id, reason)
    now = s.sweep_jobs(sweep_id)
    cancelled = [j.job_id for j in now if j.job_id in unfinished and j.state is JobState.CANCELLED]
    if not cancelled:
        fail(f"sweep {sweep_id} has no unfinished job to cancel", code=2)
    console.print(f"cancelled {len(cancelled)} job(s)")


def follow_sweep(sweep_id: str, json_out: bool) -> None:
    """Wait for the sweep (progress bars for humans); exit 1 unless every job succeeded."""
    from ops.follow import follow_sweep as follow

    s = store()
    if json_out:
        while not s.sweep(sweep_id).finished_at:
            time.sleep(1.0)
        emit_json(sweep_json(s, s.sweep(sweep_id)))
    else:
        print_summary(follow(console, s, sweep_id).sweep_id)
    if any(j.state is not JobState.SUCCEEDED for j in s.sweep_jobs(sweep_id)):
        raise typer.Exit(1)


def print_summary(sweep_id: str) -> None:
    """The finished sweep's summary.json, read from the store."""
    from jobs.objectstore import open_store, summary_key

    artifacts = open_store(get_settings())
    raw = artifacts.get_bytes(summary_key(sweep_id))
    if raw is None:
        return
    summary = SweepSummary.model_validate_json(raw)
    console.print(f"[bold]summary:[/] {summary.line()}")
    console.print(f"artifacts: {artifacts.location(sweep_id)}")


# ---- jobs ---------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    sweep: Annotated[str | None, typer.Option(help="Only this sweep's jobs.")] = None,
    limit: int = 200,
    json_out: JsonFlag = False,
) -> None:
    """Recent jobs, newest first."""
    s = store()
    if sweep:
        s.sweep(sweep)  # an unknown sweep is bad input, not an empty list
    jobs = s.sweep_jobs(sweep) if sweep else s.jobs(s.job_ids(limit))
    if json_out:
        emit_json([job_json(s, j) for j in jobs])
    else:
        console.print(jobs_table(s, jobs))


@job_app.command("show")
def job_show(job_id: str, json_out: JsonFlag = False) -> None:
    """One job: state, progress, attempts (instance, times, reason, resumed from, cost)."""
    s = store()
    job = s.job(job_id)
    if json_out:
        emit_json(job_json(s, job, detail=True))
        return
    console.print(jobs_table(s, [job], title=f"job {job_id}"))
    if job.reason:
        console.print(f"reason: {escape(job.reason)}")
    if job.pack_id or job.members:
        console.print(pack_line(s, job))
    console.print(attempts_table(s, job))
    if job.metrics:
        console.print("metrics: " + ", ".join(f"{k}={_num(v)}" for k, v in job.metrics.items()))
    if job.artifacts_dir:
        console.print(f"artifacts: {job.artifacts_dir}")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@job_app.command("cancel")
def job_cancel(job_id: str) -> None:
    """Cancel a job: its instance is terminated, its last checkpoint kept."""
    from ops.stopping import cancel_job

    s = store()
    if cancel_job(s, job_id, "cancelled by user") is not None:
        console.print(f"job {job_id} cancelled")
    else:
        fail(f"job {job_id} has already finished ({s.job(job_id).state})", code=2)


# ---- planning and the watchdog -----------------------------------------------------------------


@app.command()
def plan(file: SweepFile, json_out: JsonFlag = False) -> None:
    """What a sweep would run on, and what it would cost (live prices or the dated catalog)."""
    from ops.cli_plan import plan_command

    raise typer.Exit(plan_command(file, json_out))


watchdog_app = typer.Typer(help="The watchdog (cost caps, liveness, resume).", no_args_is_help=True)
app.add_typer(watchdog_app, name="watchdog")


@watchdog_app.command("tick")
def watchdog_tick(
    once: Annotated[bool, typer.Option("--once", help="Run one tick in the foreground.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Run the watchdog's checks now and print what they did."""
    from ops.watchdog_cli import tick_command

    raise typer.Exit(tick_command(once, json_out))


# ---- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(help="Jobs in the demo sweep (k values).")] = 3,
) -> None:
    """Start the control plane if needed and run a small sweep on the local provider."""
    from ops.demo import run_demo

    raise typer.Exit(run_demo(console, jobs))


# ---- operations (issue 7) ----


def _register_operations() -> None:
    """Operator commands; each lives in its own module (ops/, queue_app/)."""
    from ops.drain import drain_command
    from ops.flower import flower_command
    from ops.job_logs import logs_command
    from ops.publish import publish_command
    from ops.report import report_command
    from ops.services import service_command
    from ops.status_view import status_command
    from ops.teardown import teardown_command

    queue_app_ = typer.Typer(help="The task queue.", no_args_is_help=True)
    app.add_typer(queue_app_, name="queue")
    queue_app_.command("drain")(drain_command)
    fleet_app.command("teardown")(teardown_command)
    app.command("status")(status_command)
    sweep_app.command("report")(report_command)
    sweep_app.command("publish")(publish_command)
    app.command("logs")(logs_command)
    app.command("flower")(flower_command)
    app.command("service")(service_command)


_register_operations()


# ---- benchmarks (issue 8) ----

bench_app = typer.Typer(help="Benchmarks of saefleet itself.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("queue")(bench_queue_command)
bench_app.command("preemption")(bench_preemption_command)
bench_app.command("store")(bench_store_command)


# ---- entry point --------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry: maps our errors onto exit codes and one clear message."""
    try:
        code = app(standalone_mode=False)  # a typer.Exit comes back as its code
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (SpecError, BadInput, StoreConfigError, PublishRefused) as exc:
        print_error(str(exc))
        sys.exit(2)
    except NotFoundError as exc:
        print_error(str(exc))
        sys.exit(2)
    except redis.exceptions.ConnectionError:
        err.print(
            "[red]error:[/] cannot reach saefleet's Redis: start the control plane with "
            "`saefleet up` (or set SAEFLEET_REDIS_URL)",
            highlight=False,
        )
        sys.exit(1)
    except (controlplane.ProcessError, QueueDrained, StoreError, PublishFailed) as exc:
        print_error(str(exc))
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None:
            show = getattr(exc, "show", None)
            if show:
                show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
