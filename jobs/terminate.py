"""Stage `terminate`: every instance the job ever had is terminated and confirmed gone at the
provider; the final cost is recorded; the chain's result (the JobResult) is returned."""

from __future__ import annotations

import logging
import time
from typing import Any

from jobs.instances import confirm_terminated, request_termination
from jobs.results import job_result
from jobs.stage_base import StageContext, stage
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 15 * 60.0


@stage("terminate")
def terminate(ctx: StageContext) -> dict[str, Any]:
    """Terminate, confirm, and return the job's result (always data, never an exception)."""
    pending = _unconfirmed(ctx)
    if pending and not _give_up(ctx, pending):
        ctx.poll(countdown=3.0)
    if ctx.job.state is JobState.TERMINATING:
        ctx.advance(JobState.SUCCEEDED)  # the work is done; an unconfirmed instance is logged
    return job_result(ctx.store, ctx.ref.job_id).model_dump(mode="json")


def _unconfirmed(ctx: StageContext) -> list[str]:
    """The job's instances not yet confirmed gone (a provider error counts as not yet)."""
    pending = []
    for instance in _job_instances(ctx):
        try:
            if not _terminated(ctx, instance):
                pending.append(instance.instance_id)
        except Exception as exc:
            log.warning("terminating %s: %s (trying again)", instance.instance_id, exc)
            pending.append(instance.instance_id)
    return pending


def _give_up(ctx: StageContext, pending: list[str]) -> bool:
    """True once confirmation has been tried for CONFIRM_TIMEOUT_S (the watchdog's orphan
    check keeps terminating those instances)."""
    record = ctx.attempt()
    if record.terminate_started_at is None:
        ctx.update_attempt(terminate_started_at=time.time())
        return False
    if time.time() - record.terminate_started_at <= CONFIRM_TIMEOUT_S:
        return False
    log.error(
        "not confirmed terminated after %.0f min: %s (the watchdog keeps trying)",
        CONFIRM_TIMEOUT_S / 60,
        ", ".join(pending),
    )
    return True


def _job_instances(ctx: StageContext) -> list[InstanceRecord]:
    ids = [a.instance_id for a in ctx.store.attempts(ctx.ref.job_id) if a.instance_id]
    return [ctx.store.instance(i) for i in ids]


def _terminated(ctx: StageContext, instance: InstanceRecord) -> bool:
    if instance.state is InstanceState.TERMINATED:
        return True
    request_termination(ctx.store, ctx.provider, instance)
    return confirm_terminated(ctx.store, ctx.provider, ctx.store.instance(instance.instance_id))
