"""One watchdog tick: under a fleet-wide Redis lock (renewed while the tick runs, so a killed
tick frees it within its expiry), load the fleet once, ask each provider once, then run the checks
in order. An instance that one check acted on is left alone by the later ones. A check that fails
is reported and the others still run; every check is idempotent, so the next tick simply tries
again."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from jobs.instances import provider_for
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.settings import Settings
from watchdog.context import TickContext
from watchdog.costs import check_costs
from watchdog.drain import check_drain
from watchdog.fleet import Fleet, load_fleet
from watchdog.interruptions import check_interruptions
from watchdog.liveness import ProbeRound, check_liveness, start_probes
from watchdog.orphans import check_orphans
from watchdog.probe import SSHProbe
from watchdog.provider_view import observe_providers
from watchdog.report import TickReport
from watchdog.stuck import check_stuck

log = logging.getLogger(__name__)

TICK_LEASE = "watchdog:tick"


def run_tick(ctx: TickContext) -> TickReport:
    """Run one tick unless another one holds the lock (then the report says `skipped`)."""
    started = time.monotonic()
    with ctx.store.lease(TICK_LEASE, ctx.settings.watchdog_lock_ttl_s, renew=True) as held:
        if not held:
            ctx.report.skipped = True
            log.info("watchdog tick skipped: another tick holds the lock")
            return ctx.report
        _run_checks(ctx)
    ctx.report.duration_s = time.monotonic() - started
    return ctx.report


def _run_checks(ctx: TickContext) -> None:
    fleet = load_fleet(ctx.store)
    ctx.report.instances = len(fleet.tracked)
    probes = start_probes(ctx, fleet)  # SSH round trips overlap the provider calls
    try:
        _run_checks_on(ctx, fleet, probes)
    finally:
        probes.close()


def _run_checks_on(ctx: TickContext, fleet: Fleet, probes: ProbeRound) -> None:
    view = observe_providers(ctx, fleet)
    handled: set[str] = set()  # instances acted on; later checks leave them alone
    checks: tuple[tuple[str, Callable[[], set[str]]], ...] = (
        ("interruptions", lambda: check_interruptions(ctx, fleet, view)),
        ("liveness", lambda: check_liveness(ctx, probes, view, handled)),
        ("stuck", lambda: check_stuck(ctx, fleet, handled)),
        ("drain", lambda: check_drain(ctx, fleet, handled)),
        ("costs", lambda: check_costs(ctx, fleet, handled)),
        ("orphans", lambda: check_orphans(ctx, fleet, view)),
    )
    for name, check in checks:
        handled |= _guarded(ctx, name, check)


def _guarded(ctx: TickContext, name: str, check: Callable[[], set[str]]) -> set[str]:
    """Run one check; an unexpected error is reported and the tick goes on."""
    try:
        return check()
    except Exception as exc:
        log.exception("watchdog check %s failed", name)
        ctx.report.error(name, "tick", f"{type(exc).__name__}: {exc}")
        return set()


@functools.cache
def _process_probe(settings: Settings) -> SSHProbe:
    """One SSH probe per process, so sessions are reused from tick to tick."""
    return SSHProbe(settings)


def _revoke_task(task_id: str) -> None:
    app.control.revoke(task_id, terminate=True)


def live_context(settings: Settings) -> TickContext:
    """A context wired to the real store, providers, SSH and Celery."""
    return TickContext(
        store=get_store(settings),
        settings=settings,
        providers=functools.partial(provider_for, settings=settings),
        probe=_process_probe(settings),
        revoke=_revoke_task,
    )
