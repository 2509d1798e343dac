"""Stuck and idle attempts: a live attempt whose instance does no useful work is treated as
lost (preempted and resumed).

- training: no progress (heartbeat in the job record, segment sent/started/finished) for
  `SAEFLEET_WATCHDOG_STUCK_MINUTES` (T);
- any other state that holds an instance: no state change for `SAEFLEET_WATCHDOG_IDLE_GRACE_S`,
  longer than every stage's own timeout, so no stage is still working on it."""

from __future__ import annotations

from queue_app.statemachine import JobState
from watchdog.actions import interrupt
from watchdog.context import TickContext
from watchdog.fleet import Fleet, Tracked

CHECK = "stuck"


def check_stuck(ctx: TickContext, fleet: Fleet, skip: set[str]) -> set[str]:
    """Preempt stuck or idle attempts; returns the instance ids it acted on."""
    acted: set[str] = set()
    for tracked in fleet.in_use():
        if tracked.instance.instance_id in skip or tracked.terminate_requested:
            continue
        why = stuck_reason(ctx, tracked)
        if why and interrupt(ctx, CHECK, tracked, why):
            acted.add(tracked.instance.instance_id)
    return acted


def stuck_reason(ctx: TickContext, tracked: Tracked) -> str | None:
    job = tracked.job
    if job is None:
        return None
    idle_s = ctx.now - last_activity(tracked)
    if job.state is JobState.TRAINING:
        limit_s = ctx.settings.watchdog_stuck_minutes * 60
        if idle_s > limit_s:
            return (
                f"stuck: no training progress for {idle_s / 60:.1f} min "
                f"(SAEFLEET_WATCHDOG_STUCK_MINUTES={ctx.settings.watchdog_stuck_minutes:g})"
            )
        return None
    if idle_s > ctx.settings.watchdog_idle_grace_s:
        return (
            f"idle: {job.state} for {idle_s / 60:.1f} min with no stage moving it "
            f"(SAEFLEET_WATCHDOG_IDLE_GRACE_S={ctx.settings.watchdog_idle_grace_s:g})"
        )
    return None


def last_activity(tracked: Tracked) -> float:
    """The newest sign of life: a state change, training progress, or a segment event."""
    job, attempt = tracked.job, tracked.attempt
    stamps = [tracked.instance.launched_at]
    if job is not None:
        stamps.append(job.updated_at)
        if job.state is JobState.TRAINING:
            stamps.append(float(job.progress.get("updated_at") or 0.0))
    if attempt is not None:
        for stamp in (
            attempt.segment_sent_at,
            attempt.segment_started_at,
            attempt.segment_finished_at,
        ):
            stamps.append(stamp or 0.0)
    return max(stamps)
