"""Cost caps: per job (`max_cost_usd`), per sweep (`budget_usd`) and per UTC day
(`SAEFLEET_DAILY_CAP_USD`), on what watchdog.spend adds up.

On a breach, a training job gets its stop flag (`stop_requested="cost_cap"`): training writes a
checkpoint and stops, and `supervise_training` pulls it and ends the job COST_CAPPED. If the job
is still not capped `SAEFLEET_COST_CAP_GRACE_S` later, or it is not training (there is nothing
to checkpoint), the watchdog caps it itself and terminates the instance. A warning is logged once
per job, sweep or day when spending reaches `SAEFLEET_COST_WARN_FRACTION` of a cap.

A pack (`JobRecord.members`) is held to its sweep's and the daily cap; each member to its own
`max_cost_usd`, on its share of the pack's instance (jobs.job_cost). A member over its cap gets
the stop flag: the pack's worker ends the segment, and `supervise_training` caps the member
once its checkpoint is kept, while the pack trains on with the rest (past the grace period, or
while the pack is not training, the watchdog caps the member itself and the instance stays)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from queue_app.errors import IllegalTransition, StaleAttempt
from queue_app.records import JobRecord
from queue_app.statemachine import INSTANCE_STATES, JobState
from watchdog.actions import cost_cap
from watchdog.context import TickContext
from watchdog.fleet import Fleet, Tracked
from watchdog.spend import Spend, load_spend

CHECK = "costs"
WARN_TTL_S = 7 * 24 * 3600


def stop_since_key(job_id: str) -> str:
    """When the watchdog asked `job_id` to stop for its cost cap."""
    return f"sf:watchdog:cost-stop:{job_id}"


def warned_key(scope: str, target: str) -> str:
    return f"sf:watchdog:cost-warned:{scope}:{target}"


@dataclass(frozen=True)
class Budget:
    """One cap and what has been spent against it."""

    scope: str
    target: str
    setting: str
    spent_usd: float
    cap_usd: float

    @property
    def breached(self) -> bool:
        return self.spent_usd >= self.cap_usd

    def describe(self) -> str:
        return (
            f"cost cap: {self.scope} {self.target} spent ${self.spent_usd:.2f} of "
            f"${self.cap_usd:.2f} ({self.setting})"
        )


def check_costs(ctx: TickContext, fleet: Fleet, skip: set[str]) -> set[str]:
    """Enforce the caps; returns the instance ids of the jobs it capped."""
    cappable = [
        (t, t.job)
        for t in fleet.in_use()
        if t.job is not None
        and t.job.state in INSTANCE_STATES
        and t.instance.instance_id not in skip
    ]
    if not cappable:
        return set()
    daily_cap = ctx.settings.daily_cap_usd
    spend = load_spend(ctx.store, fleet, ctx.now, with_day=daily_cap is not None)
    budgets = {
        t.instance.instance_id: job_budgets(ctx, job, spend, daily_cap) for t, job in cappable
    }
    near = {
        (b.scope, b.target): b
        for bs in budgets.values()
        for b in bs
        if not b.breached and b.spent_usd >= ctx.settings.cost_warn_fraction * b.cap_usd
    }
    _warn_once(ctx, list(near.values()))
    capped: set[str] = set()
    for tracked, job in cappable:
        breached = next((b for b in budgets[tracked.instance.instance_id] if b.breached), None)
        if breached is not None and enforce(ctx, tracked, job, breached):
            capped.add(tracked.instance.instance_id)
        elif breached is None and job.members:
            check_member_caps(ctx, tracked, job, spend)
    return capped


def job_budgets(
    ctx: TickContext, job: JobRecord, spend: Spend, daily_cap: float | None
) -> list[Budget]:
    """The caps that apply to `job`, its own first (a job whose stored config does not
    validate is reported and still held to its sweep's and the daily cap)."""
    budgets = []
    try:
        job_cap = job.job_spec.config.max_cost_usd
    except ValidationError as exc:
        ctx.report.error(CHECK, job.job_id, f"stored job config is invalid: {exc}")
        job_cap = None
    if job_cap is not None and not job.members:  # a pack's members have their own caps
        spent = spend.job_usd.get(job.job_id, 0.0)
        budgets.append(Budget("job", job.job_id, "max_cost_usd", spent, job_cap))
    sweep_cap = spend.sweep_budget_usd.get(job.sweep_id)
    if sweep_cap is not None:
        spent = spend.sweep_usd.get(job.sweep_id, 0.0)
        budgets.append(Budget("sweep", job.sweep_id, "budget_usd", spent, sweep_cap))
    if daily_cap is not None and spend.day_usd is not None:
        budgets.append(Budget("day", "UTC", "SAEFLEET_DAILY_CAP_USD", spend.day_usd, daily_cap))
    return budgets


def enforce(ctx: TickContext, tracked: Tracked, job: JobRecord, budget: Budget) -> bool:
    """Ask training to checkpoint and stop; cap the job once the grace period is over.
    Returns whether the job was capped now."""
    grace_s = ctx.settings.cost_cap_grace_s
    if job.state is not JobState.TRAINING:
        why = f"{budget.describe()}; not training, so nothing to checkpoint"
        return cost_cap(ctx, tracked, why)
    key = stop_since_key(job.job_id)
    ctx.store.r.set(key, repr(ctx.now), nx=True, ex=int(grace_s * 10) + 3600)
    if job.stop_requested != "cost_cap":
        try:
            ctx.store.update_job(job.job_id, tracked.instance.attempt, stop_requested="cost_cap")
        except StaleAttempt:
            return False
        ctx.report.add(
            CHECK,
            "stop-requested",
            job.job_id,
            f"{budget.describe()}; training checkpoints and stops, "
            f"the instance is terminated in {grace_s:.0f}s if it has not",
        )
        return False
    since = float(ctx.store.r.get(key) or ctx.now)
    if ctx.now - since < grace_s:
        return False
    return cost_cap(
        ctx, tracked, f"{budget.describe()}; training did not stop within {grace_s:.0f}s"
    )


def check_member_caps(ctx: TickContext, tracked: Tracked, pack: JobRecord, spend: Spend) -> None:
    """Hold each member still in the pack to its own `max_cost_usd`, on its share of the
    instance's cost (jobs.job_cost): a member over its cap leaves the pack COST_CAPPED and the
    pack goes on with the rest."""
    members = [m for m in ctx.store.jobs(pack.members) if not m.terminal]
    budgets = []
    for member in members:
        try:
            cap = member.job_spec.config.max_cost_usd
        except ValidationError as exc:
            ctx.report.error(CHECK, member.job_id, f"stored job config is invalid: {exc}")
            continue
        if cap is not None and member.attempt == pack.attempt:
            spent = spend.job_usd.get(member.job_id, 0.0)
            budgets.append((member, Budget("job", member.job_id, "max_cost_usd", spent, cap)))
    warn = ctx.settings.cost_warn_fraction
    _warn_once(ctx, [b for _, b in budgets if not b.breached and b.spent_usd >= warn * b.cap_usd])
    for member, budget in budgets:
        if budget.breached:
            enforce_member(ctx, tracked, pack, member, budget)


def enforce_member(
    ctx: TickContext, tracked: Tracked, pack: JobRecord, member: JobRecord, budget: Budget
) -> None:
    """Ask the pack to stop the member (its worker ends the segment within seconds, every
    member checkpoints, `supervise_training` caps the member once its checkpoint is kept);
    cap it here once the grace period is over, or at once when the pack is not training."""
    if pack.state is JobState.TRAINING:
        key = stop_since_key(member.job_id)
        ctx.store.r.set(
            key, repr(ctx.now), nx=True, ex=int(ctx.settings.cost_cap_grace_s * 10) + 3600
        )
        if member.stop_requested != "cost_cap":
            try:
                ctx.store.update_job(member.job_id, member.attempt, stop_requested="cost_cap")
            except StaleAttempt:
                return
            ctx.report.add(
                CHECK,
                "stop-requested",
                member.job_id,
                f"{budget.describe()}; it checkpoints and leaves pack {pack.job_id}, which "
                "trains on",
            )
            return
        since = float(ctx.store.r.get(key) or ctx.now)
        if ctx.now - since < ctx.settings.cost_cap_grace_s:
            return
        why = f"{budget.describe()}; the pack did not stop it within the grace period"
    else:
        why = f"{budget.describe()}; not training, so nothing to checkpoint"
    kept = member.latest_checkpoint or "no checkpoint was taken"
    reason = f"{why}; it left pack {pack.job_id}, which goes on; last checkpoint kept ({kept})"
    try:
        ctx.store.transition(member.job_id, member.attempt, JobState.COST_CAPPED, reason=reason)
    except (StaleAttempt, IllegalTransition):
        return  # it moved on meanwhile
    left = {**tracked.instance.member_left_at}
    left.setdefault(member.job_id, ctx.now)  # its cost share ends (jobs.job_cost)
    ctx.store.update_instance(tracked.instance.instance_id, member_left_at=left)
    ctx.report.add(CHECK, "capped", member.job_id, reason)


def _warn_once(ctx: TickContext, budgets: list[Budget]) -> None:
    """Log the caps that spending has brought close, each once (one round trip)."""
    with ctx.store.r.pipeline(transaction=False) as pipe:
        for budget in budgets:
            pipe.set(warned_key(budget.scope, budget.target), "1", nx=True, ex=WARN_TTL_S)
        first_time = pipe.execute()
    for budget, first in zip(budgets, first_time, strict=True):
        if first:
            ctx.report.add(
                CHECK,
                "warning",
                f"{budget.scope} {budget.target}",
                f"spent ${budget.spent_usd:.2f}, {budget.spent_usd / budget.cap_usd:.0%} of its "
                f"${budget.cap_usd:.2f} cap ({budget.setting}); at 100% the job is "
                "checkpointed and stopped",
            )
