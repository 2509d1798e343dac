"""Submitting a sweep: the checks before anything is written (cost estimate against the budget,
preflight of credentials and data), then the records for the sweep, every job and every pack
job in one Redis transaction, then each pack's chain and the sweep chord. A sweep whose canvas
cannot be sent is rolled back: nothing is left half-done."""

from __future__ import annotations

import secrets
import time

from jobs.canvas import pack_chain, sweep_chord
from jobs.errors import JobsError
from jobs.instances import provider_for
from jobs.objectstore import StoreError, open_store
from jobs.plan_models import SweepPlan
from jobs.planner import plan_sweep
from jobs.preflight import PreflightReport, run_preflight
from jobs.providers import PermanentProviderError, Provider
from jobs.spec import SweepSpec
from queue_app.admission import check_admits_work
from queue_app.jobspec import JobSpec
from queue_app.pack_mirror import pack_id_for
from queue_app.records import JobRecord, SweepRecord
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store


class SubmitRefused(JobsError):
    """The sweep must not be submitted as it is; each line says why and what to do."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def check_submission(
    spec: SweepSpec, settings: Settings, *, force: bool = False
) -> tuple[SweepPlan, PreflightReport]:
    """The store, the cost plan and the preflight; SubmitRefused when the store is unusable, the
    estimate exceeds the budget (unless `force`) or a preflight check failed. Nothing is
    launched or written."""
    try:
        open_store(settings).check()
    except StoreError as exc:
        raise SubmitRefused([str(exc)]) from None
    provider = _live_provider(spec, settings)
    plan = plan_sweep(spec, provider)
    refusal = plan.budget_refusal()
    if refusal and not force:
        raise SubmitRefused([refusal])
    report = run_preflight(spec, settings, provider)
    if not report.ok:
        raise SubmitRefused([r.line() for r in report.failures])
    return plan, report


def _live_provider(spec: SweepSpec, settings: Settings) -> Provider | None:
    """The provider to price and check against, when it can be reached (local: none needed)."""
    if spec.provider.name == "local":
        return None
    try:
        return provider_for(spec.provider, settings)
    except PermanentProviderError:
        return None  # the preflight reports the missing or invalid key


def new_sweep_id() -> str:
    return f"sw{secrets.token_hex(4)}"


def job_id_for(sweep_id: str, index: int) -> str:
    return f"{sweep_id}-{index:04d}"


def job_records(sweep_id: str, jobs: list[JobSpec], now: float) -> list[JobRecord]:
    return [
        JobRecord(
            job_id=job_id_for(sweep_id, job.index),
            sweep_id=sweep_id,
            index=job.index,
            name=job.name,
            state=JobState.QUEUED,
            attempt=1,
            spec=job.stored(),
            created_at=now,
            updated_at=now,
        )
        for job in jobs
    ]


def pack_records(
    sweep_id: str, packs: list[list[int]], records: list[JobRecord]
) -> list[JobRecord]:
    """A pack job for each planned pack of two or more jobs (`packs`: grid indices); its
    members' records get its id. It runs on its first member's spec (the instance fields are
    the same for every member, jobs.packs)."""
    by_index = {r.index: r for r in records}
    out = []
    for number, indices in enumerate(p for p in packs if len(p) > 1):
        members = [by_index[i] for i in indices]
        pack_id = pack_id_for(sweep_id, number)
        for member in members:
            member.pack_id = pack_id
        first = members[0]
        out.append(
            first.model_copy(
                update={
                    "job_id": pack_id,
                    "name": "pack of " + "; ".join(m.name or m.job_id for m in members),
                    "members": [m.job_id for m in members],
                    "pack_id": None,
                }
            )
        )
    return out


def planned_packs(spec: SweepSpec, plan: SweepPlan | None) -> list[list[int]]:
    """The grid indices of each pack the fleet runs (none with `max_pack_size` 1)."""
    if spec.max_pack_size == 1:
        return []
    plan = plan if plan is not None else plan_sweep(spec, None)
    return [pack.jobs for pack in plan.packs]


def submit_sweep(
    spec: SweepSpec, jobs: list[JobSpec], store: Store, plan: SweepPlan | None = None
) -> SweepRecord:
    """Write the records and send the chord (and each pack's chain); returns the sweep record
    (QueueDrained while the queue is drained: nothing is written). The packs are `plan`'s
    (planned here when not given)."""
    check_admits_work(store.r)
    now = time.time()
    sweep_id = new_sweep_id()
    records = job_records(sweep_id, jobs, now)
    packs = pack_records(sweep_id, planned_packs(spec, plan), records)
    sweep = SweepRecord(
        sweep_id=sweep_id,
        name=spec.name,
        created_at=now,
        spec=spec.model_dump(mode="json"),
        job_ids=[r.job_id for r in records],
        budget_usd=spec.budget_usd,
        pack_ids=[p.job_id for p in packs],
    )
    store.create_sweep(sweep, records, packs)
    followers = {r.job_id for r in records if r.pack_id}
    try:
        for pack in packs:
            pack_chain(pack.job_id, sweep_id).apply_async()
        result = sweep_chord(sweep_id, sweep.job_ids, followers).apply_async()
    except BaseException:
        store.delete_sweep(sweep_id)
        raise
    _drop_result_subscriptions(result.backend)
    return sweep


def _drop_result_subscriptions(backend: object) -> None:
    """Sweeps are followed through their records, never through result handles: close the
    pub/sub subscriptions that publishing opened, now, instead of in destructors that would
    run (and fail) while the interpreter shuts down."""
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
        consumer.subscribed_to.clear()
