"""Liveness: every instance that a live attempt uses (once it has an address) is probed over
SSH in a bounded thread pool: connect, one trivial command, the training heartbeat's age and
whether the GPU-side worker and the trainer that wrote the heartbeat still run. A failed probe
is a miss; K consecutive misses (`SAEFLEET_WATCHDOG_LIVENESS_MISSES`) mean the instance is lost
and the attempt is preempted, with the provider's own account of the instance in the reason
when it has one.

Miss counts live in Redis (hash `sf:watchdog:misses`), so they survive a worker restart and a
tick on another process continues the count."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait

from jobs.instances import provider_lost_instance
from jobs.providers import ProviderError
from queue_app.statemachine import JobState, SegmentStatus
from watchdog.actions import interrupt
from watchdog.context import TickContext
from watchdog.fleet import Fleet, Tracked
from watchdog.probe import ProbeResult
from watchdog.provider_view import ProviderView

log = logging.getLogger(__name__)

CHECK = "liveness"
MISSES_KEY = "sf:watchdog:misses"
PROBE_DEADLINE_TIMEOUTS = 3  # a probe may take: connect + handshake + command, each bounded
PROBED_STATES = frozenset(
    {JobState.VERIFYING, JobState.BOOTSTRAPPING, JobState.TRAINING, JobState.COLLECTING}
)


class ProbeRound:
    """This tick's probes, in flight from `start_probes` (before the providers are asked, so
    SSH and provider round trips overlap) until `check_liveness` collects them. At most
    `watchdog_ssh_workers` run at once; one that does not finish in time is a miss."""

    def __init__(self, ctx: TickContext, targets: list[Tracked]) -> None:
        self.targets = targets
        self._deadline = time.monotonic() + PROBE_DEADLINE_TIMEOUTS * (
            ctx.settings.watchdog_ssh_timeout_s
        )
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(len(targets), ctx.settings.watchdog_ssh_workers)),
            thread_name_prefix="watchdog-probe",
        )
        self._futures = {
            t.instance.instance_id: self._pool.submit(ctx.probe, t.instance) for t in targets
        }

    def results(self) -> dict[str, ProbeResult]:
        try:
            wait(self._futures.values(), timeout=max(0.0, self._deadline - time.monotonic()))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
        late = ProbeResult(error="the probe did not finish in time")
        return {i: f.result() if f.done() else late for i, f in self._futures.items()}

    def close(self) -> None:
        """Stop waiting: cancel probes not yet started (running ones end by their timeouts)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_probes(ctx: TickContext, fleet: Fleet) -> ProbeRound:
    """Start probing every instance in use that has an address, in the probed states."""
    targets = [
        t
        for t in fleet.in_use()
        if t.instance.host is not None
        and t.job is not None
        and t.job.state in PROBED_STATES
        and not t.terminate_requested
    ]
    ctx.probe.retain(t.instance.instance_id for t in targets)
    return ProbeRound(ctx, targets)


def check_liveness(
    ctx: TickContext, probes: ProbeRound, view: ProviderView, skip: set[str]
) -> set[str]:
    """Count misses, preempt the lost; returns the instance ids it acted on."""
    results = probes.results()
    targets = [t for t in probes.targets if t.instance.instance_id not in skip]
    misses = {
        t.instance.instance_id: miss_reason(ctx, t, results[t.instance.instance_id])
        for t in targets
    }
    counts = _count_misses(ctx, misses)
    acted: set[str] = set()
    for tracked in targets:
        instance_id = tracked.instance.instance_id
        if counts.get(instance_id, 0) < ctx.settings.watchdog_liveness_misses:
            continue
        why = _lost_reason(ctx, view, tracked, counts[instance_id], misses[instance_id] or "")
        if interrupt(ctx, CHECK, tracked, why):
            acted.add(instance_id)
        ctx.store.r.hdel(MISSES_KEY, instance_id)
    return acted


def miss_reason(ctx: TickContext, tracked: Tracked, result: ProbeResult) -> str | None:
    """Why this probe counts as a miss, or None when the instance looks alive.

    While training: the worker process must run, and a heartbeat that this segment's trainer
    wrote may only go stale while that trainer still runs (it is busy: final evals write no
    heartbeat; a trainer that hangs is the stuck check's to find)."""
    if result.error is not None:
        return f"unreachable over SSH ({result.error})"
    if tracked.job is None or tracked.job.state is not JobState.TRAINING:
        return None
    if result.worker_alive is False:
        return "the GPU-side worker process is not running"
    attempt = tracked.attempt
    age = result.heartbeat_age_s
    if attempt is None or attempt.segment_status is not SegmentStatus.RUNNING or age is None:
        return None
    running_for = ctx.now - (attempt.segment_started_at or ctx.now)
    # Ages are measured on the instance and durations here, so clock offsets cancel: a
    # heartbeat younger than the segment was written by this segment's trainer.
    stale = running_for > age > ctx.settings.watchdog_heartbeat_max_age_s
    if stale and result.trainer_alive is False:
        return f"the trainer process is gone (its heartbeat is {age:.0f}s old)"
    return None


def _count_misses(ctx: TickContext, misses: dict[str, str | None]) -> dict[str, int]:
    """Add this tick's misses, clear the counts of healthy or no longer probed instances."""
    stale = set(ctx.store.r.hkeys(MISSES_KEY)) - {i for i, why in misses.items() if why}
    with ctx.store.r.pipeline(transaction=False) as pipe:
        missed = [i for i, why in misses.items() if why]
        for instance_id in missed:
            pipe.hincrby(MISSES_KEY, instance_id, 1)
        if stale:
            pipe.hdel(MISSES_KEY, *stale)
        replies = pipe.execute()
    counts = dict(zip(missed, (int(n) for n in replies[: len(missed)]), strict=True))
    for instance_id, count in counts.items():
        log.info("liveness miss %d for %s: %s", count, instance_id, misses[instance_id])
    return counts


def _lost_reason(
    ctx: TickContext, view: ProviderView, tracked: Tracked, count: int, last_miss: str
) -> str:
    """The reason recorded for a lost instance; the provider is asked what it knows."""
    why = f"lost: {count} consecutive liveness misses, last: {last_miss}"
    provider = view.providers.get(tracked.instance.provider)
    if provider is None:
        return why
    try:
        account = provider_lost_instance(provider, tracked.instance)
    except ProviderError as exc:
        return f"{why} (the provider could not be asked: {exc})"
    return f"{account} ({why})" if account else f"{why} (the provider still reports it running)"
