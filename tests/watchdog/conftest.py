"""Fixtures for the watchdog's unit tests: a store on fakeredis (or the real test Redis), a
fleet builder that writes sweep, job, attempt and instance records the way the stages do, and a
tick context wired to in-process fakes (provider, SSH probe, revocation)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from jobs.providers import instance_name
from jobs.spec import ProviderSpec
from queue_app.settings import Settings
from queue_app.state import (
    InstanceRecord,
    InstanceState,
    JobRecord,
    JobState,
    Store,
    SweepRecord,
)
from tests.support.sweeps import tiny_job
from watchdog.context import TickContext
from watchdog.fakes import FakeProvider
from watchdog.probe import ProbeResult

S = JobState
ASSETS = {"model": Path("tiny-lm"), "corpus": Path("corpus.jsonl")}
PATH_TO: dict[JobState, list[JobState]] = {
    S.PROVISIONING: [S.PROVISIONING],
    S.BOOTING: [S.PROVISIONING, S.BOOTING],
    S.VERIFYING: [S.PROVISIONING, S.BOOTING, S.VERIFYING],
    S.BOOTSTRAPPING: [S.PROVISIONING, S.BOOTING, S.VERIFYING, S.BOOTSTRAPPING],
    S.TRAINING: [S.PROVISIONING, S.BOOTING, S.VERIFYING, S.BOOTSTRAPPING, S.TRAINING],
    S.COLLECTING: [
        S.PROVISIONING,
        S.BOOTING,
        S.VERIFYING,
        S.BOOTSTRAPPING,
        S.TRAINING,
        S.COLLECTING,
    ],
}


class FakeProbe:
    """A probe that answers from a dict (default: healthy) and records whom it probed."""

    def __init__(self) -> None:
        self.results: dict[str, ProbeResult] = {}
        self.probed: list[str] = []
        self.retained: set[str] = set()
        self.delay_s = 0.0

    def __call__(self, instance: InstanceRecord) -> ProbeResult:
        self.probed.append(instance.instance_id)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.results.get(instance.instance_id, ProbeResult(heartbeat_age_s=1.0))

    def retain(self, instance_ids: Iterable[str]) -> None:
        self.retained = set(instance_ids)


@dataclass
class World:
    """The fakes a tick talks to, and a builder of records in the store."""

    store: Store
    settings: Settings
    provider: FakeProvider = field(default_factory=FakeProvider)
    probe: FakeProbe = field(default_factory=FakeProbe)
    revoked: list[str] = field(default_factory=list)
    _jobs: int = 0

    def context(self, now: float | None = None) -> TickContext:
        return TickContext(
            store=self.store,
            settings=self.settings,
            providers=self.provider_for,
            probe=self.probe,
            revoke=self.revoked.append,
            now=now if now is not None else time.time(),
        )

    def provider_for(self, spec: ProviderSpec) -> FakeProvider:
        return self.provider

    def sweep(self, budget_usd: float | None = None, **job: Any) -> str:
        """A sweep with one job in QUEUED; returns the job id."""
        self._jobs += 1
        sweep_id, job_id = f"sw{self._jobs}", f"sw{self._jobs}-0000"
        now = time.time()
        config = tiny_job(ASSETS, **job)
        self.store.create_sweep(
            SweepRecord(
                sweep_id=sweep_id,
                name="t",
                created_at=now,
                spec={},
                job_ids=[job_id],
                budget_usd=budget_usd,
            ),
            [
                JobRecord(
                    job_id=job_id,
                    sweep_id=sweep_id,
                    index=0,
                    name=job_id,
                    state=S.QUEUED,
                    attempt=1,
                    spec={"config": config, "provider": {"name": "local"}, "overrides": {}},
                    created_at=now,
                    updated_at=now,
                )
            ],
        )
        self.store.start_first_attempt(job_id)
        return job_id

    def launch(
        self,
        job_id: str,
        state: JobState = S.TRAINING,
        price_per_hour: float = 1.0,
        launched_ago_s: float = 60.0,
    ) -> InstanceRecord:
        """Walk the job to `state` with an instance for its current attempt."""
        job = self.store.job(job_id)
        if job.state is S.PREEMPTED:
            self.store.begin_attempt(job_id, job.attempt + 1)
            job = self.store.job(job_id)
        instance_id = f"fake-{job_id}-{job.attempt}"
        name = instance_name(job_id, job.attempt)
        self.provider.add(instance_id, name)
        record = InstanceRecord(
            instance_id=instance_id,
            provider="local",
            name=name,
            job_id=job_id,
            sweep_id=job.sweep_id,
            attempt=job.attempt,
            state=InstanceState.LAUNCHED,
            launched_at=time.time() - launched_ago_s,
            price_per_hour=price_per_hour,
            host="127.0.0.1",
            ssh_port=22,
            ssh_user="ubuntu",
            workdir=f"/home/ubuntu/{name}",
        )
        self.store.register_instance(record)
        self.store.update_attempt(job_id, job.attempt, instance_id=instance_id)
        for target in PATH_TO[state][1 if job.state is S.PROVISIONING else 0 :]:
            self.store.transition(job_id, job.attempt, target)
        return record

    def training(self, job_id: str, segment: int = 1, status: str = "running") -> None:
        """Record a training segment of the job's attempt in `status`."""
        job = self.store.job(job_id)
        now = time.time()
        self.store.update_attempt(
            job_id,
            job.attempt,
            segment=segment,
            segment_status=status,
            segment_sent_at=now,
            segment_started_at=now,
        )


@pytest.fixture
def wd_settings(home: Path) -> Settings:
    """Settings for unit ticks: quick thresholds."""
    return Settings(
        watchdog_liveness_misses=2,
        watchdog_orphan_grace_s=60,
        cost_cap_grace_s=60,
        watchdog_ssh_timeout_s=2,
    )


@pytest.fixture
def world(wd_settings: Settings) -> World:
    return World(Store(fakeredis.FakeRedis(decode_responses=True)), wd_settings)


@pytest.fixture
def redis_world(store: Store, wd_settings: Settings) -> World:
    """Like `world`, on the real test Redis (for the fleet-wide lock)."""
    return World(store, wd_settings)
