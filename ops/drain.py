"""Drain the queue: stop new work and release the GPUs without losing any (`ops/drain`,
`saefleet queue drain`).

    drain           raise the drained flag (new sweeps are refused, no stage launches an instance
                    or starts a segment), then every worker stops consuming its work queues
                    (Celery `cancel_consumer`); pending messages stay in Redis. Each training
                    job checkpoints at its next step; its checkpoint is pulled and verified, its
                    instance terminated, and it waits PAUSED at no cost (watchdog.drain: run
                    here once, then by every watchdog tick, also after this command returns).
                    With --wait it waits until nothing bills; with --shutdown the control-plane
                    workers then shut down warm.
    drain --status  the workers, what they run and reserve, what is queued, and each job's way
                    to costing nothing.
    drain --undo    every worker consumes its queues again, the flag is lowered, and every
                    paused job resumes from its checkpoint as its next attempt (in the same
                    chord slot: its waiting stage message replaces itself, as on preemption).

The watchdog queue keeps being consumed unless --include-watchdog: cost caps, the orphan reaper
and the drain step keep working while work is drained (with --include-watchdog only this command,
and its --wait, release instances). The queues each worker consumed
are kept with the flag, so --undo gives every worker back exactly what it had; a worker that
starts during a drain stops consuming at once (queue_app.admission).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Annotated

import typer

from jobs.instances import confirm_terminated
from jobs.providers import ProviderError
from ops.queue_state import (
    DISCOVER_TIMEOUT_S,
    INSPECT_TIMEOUT_S,
    celery_app,
    expected_gpu_workers,
    snapshot,
    status_tables,
    worker_queues,
)
from ops.steps import StepReport, log_to_file, run_script
from ops.views import terminal
from queue_app.admission import PAUSE_REQUEST, clear_drained, drain_state, set_drained
from queue_app.connection import get_store
from queue_app.errors import StaleAttempt
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import JobState
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
    """Refuse new sweeps, stop every worker consuming, release the instances (now, and by the
    watchdog after this returns), optionally wait until nothing bills and shut down."""
    store, app = get_store(settings), celery_app(settings)
    keep = kept_queues(include_watchdog)
    # First the flag (nothing new starts) and the stop requests (training checkpoints at its
    # next step), then the slower round of asking workers to stop consuming.
    set_drained(store.r, "drain", {}, keep)
    report.record("refuse new sweeps", True, "drained flag set: `sweep submit` now refuses")
    release_instances(settings, report)
    answered = worker_queues(app)
    stop_consuming(app, store, report, answered, keep)
    billing = release_instances(settings, report)  # again: segments stopped meanwhile get paused
    who = "the watchdog" if not include_watchdog else "only `drain --wait` (no watchdog runs)"
    report.record(
        "release instances",
        True,
        "nothing bills"
        if not billing
        else f"{len(billing)} instance(s) still bill; {who} pauses their jobs as each "
        "checkpoint is pulled: " + "; ".join(billing),
    )
    if wait_s > 0:
        billing = wait_until_nothing_bills(settings, report, wait_s)
        report.record(
            "nothing bills",
            not billing,
            "every job paused or waiting at no cost"
            if not billing
            else f"after {wait_s:.0f}s still billing: " + "; ".join(billing),
        )
    if shutdown:
        shut_down_control_workers(app, report, list(answered))


def stop_consuming(
    app: Celery, store: Store, report: StepReport, answered: dict[str, list[str]], keep: list[str]
) -> None:
    """Every worker stops consuming its work queues (recorded with the flag for --undo); a
    GPU-side worker whose instance was released meanwhile needs nothing more."""
    live_gpu = expected_gpu_workers(store)
    cancel = {
        node: [q for q in queues if q not in keep]
        for node, queues in answered.items()
        if not node.startswith(GPU_WORKER_PREFIX) or node in live_gpu
    }
    for node, queues in live_gpu.items():
        cancel.setdefault(node, queues)  # busy and slow to answer the broadcast: ask it directly
    set_drained(store.r, "drain", cancel, keep)
    if not cancel:
        report.record("stop consuming", True, "no worker answered: nothing consumes now")
    for node, queues in sorted(cancel.items()):
        failed = [q for q in queues if not _control_ok(app, "cancel_consumer", q, node)]
        what = ", ".join(queues) or "no work queue"
        if not failed:
            report.record(f"stop consuming on {node}", True, f"stopped consuming {what}")
        elif node not in expected_gpu_workers(store) and node.startswith(GPU_WORKER_PREFIX):
            report.record(f"stop consuming on {node}", True, "its instance was released")
        else:
            report.record(
                f"stop consuming on {node}",
                False,
                f"no reply: it may still consume {', '.join(failed)} (run drain again)",
            )
    snap = snapshot(app, store, sorted(cancel))
    pending = sum(snap["pending"].values())
    report.record(
        "keep pending work",
        True,
        f"{pending} message(s) wait in Redis, {snap['unacked']} reserved by workers",
        pending=snap["pending"],
    )


def release_instances(settings: Settings, report: StepReport) -> list[str]:
    """Run the drain step here and now (watchdog.drain: a training job checkpoints at its next
    step, is pulled, paused, its instance terminated); returns what still bills. What the step
    could not do yet (it is tried again) is noted."""
    from watchdog.drain import check_drain
    from watchdog.fleet import load_fleet
    from watchdog.tick import live_context

    ctx = live_context(settings)
    check_drain(ctx, load_fleet(ctx.store), set())
    for error in ctx.report.errors:
        report.note(f"{error.target}: {error.detail}")
    billing = []
    for tracked in load_fleet(ctx.store).tracked:
        instance, job = tracked.instance, tracked.job
        why = str(job.state) if job else "no job"
        if tracked.terminate_requested:
            try:
                provider = ctx.providers(tracked.provider_spec)
                if confirm_terminated(ctx.store, provider, instance):
                    continue
                why = "terminating"
            except ProviderError as exc:
                why = f"cannot ask its provider: {exc}"
        billing.append(f"{instance.instance_id} ({instance.job_id}: {why})")
    return billing


def wait_until_nothing_bills(settings: Settings, report: StepReport, wait_s: float) -> list[str]:
    """Release instances until none bills (or `wait_s` passes); returns what still bills."""
    deadline = time.monotonic() + wait_s
    billing = release_instances(settings, report)
    while billing and time.monotonic() < deadline:
        report.note(f"{len(billing)} still bill: {'; '.join(billing)}")
        time.sleep(WAIT_POLL_S)
        billing = release_instances(settings, report)
    return billing


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
    """Every drained worker consumes again what it consumed before; the flag is lowered; every
    paused job resumes as attempt+1 from its checkpoint (its waiting stage does it)."""
    store, app = get_store(settings), celery_app(settings)
    state = drain_state(store.r)
    if state is None:
        report.record("resume", True, "the queue was not drained")
        return
    withdrawn = withdraw_pause_requests(store)
    if withdrawn:
        report.note(f"training goes on without pausing: {', '.join(withdrawn)}")
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
    if not report.ok:
        report.record("admit new sweeps", False, "flag kept: run --undo again once workers answer")
        return
    clear_drained(store.r)
    report.record("admit new sweeps", True, "drained flag cleared")
    paused = [j.job_id for j in store.jobs(store.job_ids()) if j.state is JobState.PAUSED]
    report.record(
        "resume paused jobs",
        True,
        f"{len(paused)} job(s) resume as their next attempt from their checkpoints: "
        + ", ".join(paused)
        if paused
        else "no job was paused",
        paused=paused,
    )


def withdraw_pause_requests(store: Store) -> list[str]:
    """Jobs a drain asked to pause that are still training carry on (their stop flag goes)."""
    withdrawn = []
    for job in store.jobs(store.job_ids()):
        if job.state is JobState.TRAINING and job.stop_requested == PAUSE_REQUEST:
            with contextlib.suppress(StaleAttempt):
                store.update_job(job.job_id, job.attempt, stop_requested="")
                withdrawn.append(job.job_id)
    return withdrawn


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
    console = None if json_out else terminal()
    if status:
        snap = snapshot(celery_app(settings), get_store(settings))
        if json_out:
            StepReport(None).finish(True, status=snap)
        else:
            for part in status_tables(snap):
                terminal().print(part)
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
