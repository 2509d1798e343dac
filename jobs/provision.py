"""Stages `provision` (launch the attempt's instance, cheapest candidate with capacity first)
and `await_ready` (poll the provider until the instance is active with an address)."""

from __future__ import annotations

import logging
import time
from typing import NoReturn

from jobs.errors import InstanceLost, StageFailed
from jobs.instances import fleet_keypair
from jobs.placement import Candidate, plan_launch
from jobs.providers import (
    CapacityError,
    Instance,
    InstanceStatus,
    LaunchRequest,
    NotFound,
    QuotaError,
    instance_name,
)
from jobs.stage_base import RESUMABLE, StageContext, backoff, stage
from queue_app.admission import PAUSE_REQUEST, drain_state
from queue_app.pack_mirror import following_members
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState

log = logging.getLogger(__name__)


@stage("provision")
def provision(ctx: StageContext) -> None:
    """Launch the instance named `sf-<job>-<attempt>`; a retried provision finds it by name
    instead of launching a second one. Waits (bounded) when no candidate has capacity, and
    launches nothing while the queue is drained."""
    job_id, attempt = ctx.ref.job_id, ctx.ref.attempt
    if ctx.job.state in (JobState.QUEUED, *RESUMABLE) and drain_state(ctx.store.r) is not None:
        ctx.poll()
    if ctx.job.state in RESUMABLE:
        # A drain's stop request ends with the pause it asked for.
        unpause = {"stop_requested": ""} if ctx.job.stop_requested == PAUSE_REQUEST else {}
        ctx.store.begin_attempt(job_id, attempt, **unpause)
    elif ctx.job.state is JobState.QUEUED:
        ctx.store.start_first_attempt(job_id)
        ctx.advance(JobState.PROVISIONING)
    record = ctx.attempt()
    if record.instance_id is None:
        name = instance_name(job_id, attempt)
        launched = _find_by_name(ctx, name) or _launch(ctx, name)
        _register(ctx, launched)
    ctx.advance(JobState.BOOTING, instance_id=ctx.attempt().instance_id)


def _find_by_name(ctx: StageContext, name: str) -> Instance | None:
    for instance in ctx.provider.list():
        if instance.name == name and not instance.status.gone:
            log.info("found %s already launched as %s", name, instance.id)
            return instance
    return None


def _launch(ctx: StageContext, name: str) -> Instance:
    job_id = ctx.ref.job_id
    job = ctx.store.job(job_id)
    candidates = plan_launch(
        ctx.config,
        job.job_spec.provider,
        ctx.provider,
        job.preemptions,
        gpu_memory_above_gb=job.gpu_memory_above_gb,
    )
    _, public_key = fleet_keypair(ctx.settings)
    refused: list[str] = []
    for candidate in candidates:
        request = LaunchRequest(
            name=name,
            instance_type=candidate.instance_type,
            region=candidate.region,
            capacity=candidate.capacity,
            ssh_public_key=public_key,
            file_system=job.job_spec.provider.file_system,
            disk_gb=ctx.config.disk_gb,
            labels={"job": job_id, "attempt": str(ctx.ref.attempt), "sweep": ctx.ref.sweep_id},
        )
        try:
            instance = ctx.provider.launch(request)
        except CapacityError:
            refused.append(f"{candidate.instance_type}@{candidate.region}: no capacity")
            continue
        except QuotaError as exc:
            refused.append(f"{candidate.instance_type}: {exc}")
            continue
        ctx.store.clear_waiting(ctx.ref.job_id, ctx.ref.attempt)
        log.info("launched %s as %s (%s)", name, instance.id, _describe(candidate))
        return instance
    _wait_for_capacity(ctx, candidates, refused)


def _wait_for_capacity(
    ctx: StageContext, candidates: list[Candidate], refused: list[str]
) -> NoReturn:
    tried = "; ".join(refused) or "no instance type fits this job"
    what = f"capacity ({len(candidates)} candidates): {tried}"
    waited = time.time() - ctx.store.set_waiting(ctx.ref.job_id, ctx.ref.attempt, what)
    if waited > ctx.config.max_wait_for_capacity_s:
        raise StageFailed(
            f"no capacity after waiting {waited / 60:.0f} min (max_wait_for_capacity_s): {tried}"
        )
    waits = ctx.store.count_attempt_event(ctx.ref.job_id, ctx.ref.attempt, "capacity_wait")
    ctx.poll(countdown=backoff(waits, base=5.0))


def _describe(candidate: Candidate) -> str:
    return (
        f"{candidate.instance_type} in {candidate.region}, {candidate.capacity}, "
        f"${candidate.price_per_hour:.2f}/h"
    )


def _register(ctx: StageContext, instance: Instance) -> None:
    """Record the instance (a pack's: with the members training on it, who share its cost)."""
    members = (
        following_members(ctx.store, ctx.ref.job_id, ctx.ref.attempt) if ctx.job.members else []
    )
    ctx.store.register_instance(
        InstanceRecord(
            instance_id=instance.id,
            provider=ctx.provider.name,
            name=instance.name,
            job_id=ctx.ref.job_id,
            sweep_id=ctx.ref.sweep_id,
            attempt=ctx.ref.attempt,
            state=InstanceState.LAUNCHED,
            launched_at=time.time(),
            price_per_hour=instance.price_per_hour,
            instance_type=instance.instance_type,
            region=instance.region,
            capacity=instance.capacity,
            members=members,
        )
    )
    for job_id in [*members, ctx.ref.job_id]:
        ctx.store.update_attempt(
            job_id, ctx.ref.attempt, instance_id=instance.id, capacity=instance.capacity
        )


@stage("await_ready")
def await_ready(ctx: StageContext) -> None:
    """Poll the provider until the instance is active with an SSH address (bounded)."""
    instance = ctx.require_instance()
    try:
        status = ctx.provider.get(instance.instance_id)
    except NotFound:
        raise InstanceLost(f"instance {instance.instance_id} vanished while booting") from None
    if status.status.gone:
        raise InstanceLost(f"instance {instance.instance_id} was {status.status} while booting")
    if status.status is InstanceStatus.ACTIVE and status.host:
        ctx.store.update_instance(
            instance.instance_id,
            host=status.host,
            ssh_port=status.ssh_port,
            ssh_user=status.ssh_user,
            workdir=status.workdir,
        )
        ctx.store.clear_waiting(ctx.ref.job_id, ctx.ref.attempt)
        ctx.advance(JobState.VERIFYING)
        return
    waited = time.time() - instance.launched_at
    if waited > ctx.settings.boot_timeout_s:
        raise StageFailed(
            f"instance {instance.instance_id} not active after {waited / 60:.1f} min "
            f"(status {status.status}; SAEFLEET_BOOT_TIMEOUT_S)"
        )
    ctx.store.set_waiting(
        ctx.ref.job_id, ctx.ref.attempt, f"instance {instance.instance_id} {status.status}"
    )
    ctx.poll()
