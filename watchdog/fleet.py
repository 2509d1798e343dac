"""The fleet as one tick sees it: every instance we have not yet confirmed terminated, with its
job and attempt records, read in three round trips whatever the fleet's size."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pydantic import ValidationError

from queue_app.jobspec import ProviderSpec
from queue_app.keys import LIVE_INSTANCES, attempt_key, instance_key, job_key
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.statemachine import INSTANCE_STATES, HandoffStatus, JobState
from queue_app.store import Store
from watchdog.bulk import hgetall_many

# Job states in which the current attempt's instance is in use.
USING_STATES = INSTANCE_STATES | {JobState.COLLECTING}


@dataclass(frozen=True)
class Tracked:
    """One live instance with its job and the attempt it was launched for."""

    instance: InstanceRecord
    job: JobRecord | None
    attempt: AttemptRecord | None

    @property
    def in_use(self) -> bool:
        """The instance belongs to its job's current attempt, which still needs it."""
        return (
            self.job is not None
            and self.job.attempt == self.instance.attempt
            and self.job.state in USING_STATES
        )

    @property
    def handing_off(self) -> bool:
        """Its attempt was noticed and the checkpoint written on notice is still being handed
        off to the next attempt, which terminates the instance then (jobs.notice_handoff)."""
        return self.attempt is not None and self.attempt.handoff is HandoffStatus.OPEN

    @property
    def terminate_requested(self) -> bool:
        return self.instance.terminate_requested_at is not None

    @property
    def provider_spec(self) -> ProviderSpec:
        """The provider spec of the instance's job (its sweep's), else (no job, or one whose
        stored spec does not validate) the provider by name."""
        if self.job is not None:
            with contextlib.suppress(ValidationError):
                return self.job.job_spec.provider
        return ProviderSpec.model_validate({"name": self.instance.provider})


@dataclass(frozen=True)
class Fleet:
    tracked: list[Tracked]

    def in_use(self) -> list[Tracked]:
        return [t for t in self.tracked if t.in_use]

    def by_instance(self) -> dict[str, Tracked]:
        return {t.instance.instance_id: t for t in self.tracked}


def load_fleet(store: Store) -> Fleet:
    """Live instances, their jobs and attempts (three round trips whatever the fleet's size)."""
    ids = sorted(store.r.smembers(LIVE_INSTANCES))
    raw_instances = hgetall_many(store.r, [instance_key(i) for i in ids])
    instances = [InstanceRecord.from_hash(raw) for raw in raw_instances if raw]
    job_ids = sorted({i.job_id for i in instances})
    keys = [job_key(j) for j in job_ids]
    keys += [attempt_key(i.job_id, i.attempt) for i in instances]
    replies = hgetall_many(store.r, keys)
    jobs = {
        job_id: JobRecord.from_hash(raw)
        for job_id, raw in zip(job_ids, replies[: len(job_ids)], strict=True)
        if raw
    }
    attempts = [AttemptRecord.from_hash(raw) if raw else None for raw in replies[len(job_ids) :]]
    return Fleet(
        [
            Tracked(instance, jobs.get(instance.job_id), attempt)
            for instance, attempt in zip(instances, attempts, strict=True)
        ]
    )
