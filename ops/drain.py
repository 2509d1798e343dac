"""Drain the queue: stop taking new work without losing any (`ops/drain`, `saefleet queue drain`).

    drain           raise the drained flag (new sweeps are refused), then every worker stops
                    consuming its work queues (Celery `cancel_consumer`); what a worker is running
                    finishes, a training segment in flight trains to its end and checkpoints,
                    and every pending message stays in Redis. With --wait it waits for that;
                    with --shutdown the control-plane workers then shut down warm.
    drain --status  what is still running, reserved and queued.
    drain --undo    every worker consumes its queues again and the flag is lowered.

The watchdog queue keeps being consumed unless --include-watchdog: cost caps and the orphan
reaper keep protecting the bill while work is drained. The queues each worker consumed are
kept with the flag, so --undo gives every worker back exactly what it had; a worker that
starts during a drain stops consuming at once (queue_app.admission).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ops.queue_state import (
    DISCOVER_TIMEOUT_S,
    INSPECT_TIMEOUT_S,
    celery_app,
    expected_gpu_workers,
    in_flight,
    snapshot,
    status_tables,
    worker_queues,
)
from ops.steps import StepReport, log_to_file, run_script
from queue_app.admission import clear_drained, drain_state, set_drained
from queue_app.connection import get_store
from queue_app.settings import Settings, get_settings
from queue_app.store import Store

if TYPE_CHECKING:
    from celery import Celery

CONTROL_TRIES = 2
WAIT_POLL_S = 1.0
GPU_WORKER_PREFIX = "gpu-"


# ---- drain / undo -------------------------------------------------------------------------------


def kept_queues(include_watchdog: bool) -> list[str]:
    """The queues a drain leaves consumed: the watchdog's, unless asked."""
    from queue_app.celery_app import WATCHDOG_QUEUE

    return [] if include_watchdog else [WATCHDOG_QUEUE]


def drain(
    settings: Settings,
    report: StepReport,
    include_watchdog: bool = False,
    wait_s: float = 0.0,
    shutdown: bool = False,
) -> None:
    """Refuse new sweeps, stop every worker consuming, optionally wait and shut down."""
    store, app = get_store(settings), celery_app(settings)
    answered = worker_queues(app)
    keep = kept_queues(include_watchdog)
    cancel = {node: [q for q in qs if q not in keep] for node, qs in answered.items()}
    for node, queues in expected_gpu_workers(store).items():
        cancel.setdefault(node, queues)  # busy and slow to answer the broadcast: ask it directly
    set_drained(store.r, "drain", cancel, keep)
    report.record("refuse new sweeps", True, "drained flag set: `sweep submit` now refuses")
    if not cancel:
        report.record("stop consuming", True, "no worker answered: nothing consumes now")
    for node, queues in sorted(cancel.items()):
        failed = [q for q in queues if not _control_ok(app, "cancel_consumer", q, node)]
        what = ", ".join(queues) or "no work queue"
        if failed:
            report.record(
                f"stop consuming on {node}",
                False,
                f"no reply: it may still consume {', '.join(failed)} (run drain again)",
            )
        else:
            report.record(f"stop consuming on {node}", True, f"stopped consuming {what}")
    snap = snapshot(app, store, sorted(cancel))
    pending = sum(snap["pending"].values())
    report.record(
        "keep pending work",
        True,
        f"{pending} message(s) wait in Redis, {snap['unacked']} reserved by workers",
        pending=snap["pending"],
    )
    running = in_flight(snap)
    if wait_s > 0 and running:
        running = wait_for_in_flight(app, store, report, wait_s)
    report.record(
        "work in flight",
        not (wait_s > 0 and running),
        "none" if not running else "still running: " + "; ".join(running),
    )
    if shutdown:
        shut_down_control_workers(app, report, list(answered))


def wait_for_in_flight(app: Celery, store: Store, report: StepReport, wait_s: float) -> list[str]:
    """Poll until nothing runs (or `wait_s` passes); returns what still runs."""
    deadline = time.monotonic() + wait_s
    nodes = sorted(worker_queues(app))
    running = in_flight(snapshot(app, store, nodes))
    while running and time.monotonic() < deadline:
        report.note(f"waiting for {len(running)}: {'; '.join(running)}")
        time.sleep(WAIT_POLL_S)
        running = in_flight(snapshot(app, store, nodes))
    return running


def shut_down_control_workers(app: Celery, report: StepReport, nodes: list[str]) -> None:
    """Warm shutdown of the control-plane workers (GPU-side workers keep their process: they
    only stopped consuming, so `--undo` resumes them in place)."""
    control = [n for n in nodes if not n.startswith(GPU_WORKER_PREFIX)]
    if not control:
        report.record("warm shutdown", True, "no control-plane worker runs")
        return
    app.control.shutdown(destination=control)
    deadline = time.monotonic() + 60.0
    alive = control
    while alive and time.monotonic() < deadline:
        replies = app.control.ping(destination=control, timeout=DISCOVER_TIMEOUT_S) or []
        alive = [node for reply in replies for node in reply]
    if alive:
        report.record("warm shutdown", False, f"still answering after 60 s: {', '.join(alive)}")
    else:
        report.record("warm shutdown", True, f"shut down {', '.join(control)}")


def undo(settings: Settings, report: StepReport) -> None:
    """Every drained worker consumes again what it consumed before; the flag is lowered."""
    store, app = get_store(settings), celery_app(settings)
    state = drain_state(store.r)
    if state is None:
        report.record("resume", True, "the queue was not drained")
        return
    reachable = set(worker_queues(app)) | set(expected_gpu_workers(store))
    for node, queues in sorted(state.workers.items()):
        if node not in reachable:
            report.note(f"{node} no longer runs: nothing to resume there")
            continue
        failed = [q for q in queues if not _control_ok(app, "add_consumer", q, node)]
        if failed:
            report.record(f"resume {node}", False, f"no reply for {', '.join(failed)}")
        else:
            report.record(f"resume {node}", True, f"consuming {', '.join(queues) or 'as before'}")
    if report.ok:
        clear_drained(store.r)
        report.record("admit new sweeps", True, "drained flag cleared")
    else:
        report.record("admit new sweeps", False, "flag kept: run --undo again once workers answer")


def _control_ok(app: Celery, command: str, queue: str, node: str) -> bool:
    """Send `cancel_consumer`/`add_consumer` for `queue` to `node` (again if the reply is late:
    both are idempotent); True when it confirmed."""
    for _ in range(CONTROL_TRIES):
        replies = getattr(app.control, command)(
            queue, destination=[node], reply=True, limit=1, timeout=INSPECT_TIMEOUT_S
        )
        if any("ok" in reply.get(node, {}) for reply in replies or []):
            return True
    return False


# ---- the command --------------------------------------------------------------------------------


def drain_command(
    status: Annotated[
        bool, typer.Option("--status", help="Show what still runs and what is queued.")
    ] = False,
    undo_: Annotated[bool, typer.Option("--undo", help="Resume consuming; admit sweeps.")] = False,
    wait: Annotated[
        float,
        typer.Option(help="Wait up to this many seconds for running tasks and segments to end."),
    ] = 0.0,
    shutdown: Annotated[
        bool, typer.Option("--shutdown", help="Then shut the control-plane workers down warm.")
    ] = False,
    include_watchdog: Annotated[
        bool,
        typer.Option("--include-watchdog", help="Drain the watchdog queue too (cost caps pause)."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Stop taking new work without losing any: refuse sweeps, stop consuming, keep messages."""
    if status and undo_:
        raise typer.BadParameter("--status and --undo exclude each other")
    settings = get_settings()
    log_to_file(settings)
    console = None if json_out else Console()
    if status:
        snap = snapshot(celery_app(settings), get_store(settings))
        if json_out:
            StepReport(None).finish(True, status=snap)
        else:
            for part in status_tables(snap):
                Console().print(part)
        return
    report = StepReport(console)
    if undo_:
        undo(settings, report)
    else:
        drain(settings, report, include_watchdog, wait, shutdown)
    report.finish(json_out)


def main() -> None:
    """`ops/drain`: the same command as `saefleet queue drain`."""
    run_script(drain_command)


if __name__ == "__main__":
    main()
