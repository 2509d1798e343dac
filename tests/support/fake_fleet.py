"""A fleet in the store without Celery or instances: sweep, job, attempt and instance records
written the way the stages write them, with the instances kept by an in-process fake provider
(jobs.providers.fake). The stage and watchdog unit tests build their worlds with it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from jobs.providers import instance_name
from jobs.providers.fake import FakeProvider
from jobs.tiny_sweep import tiny_job
from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.settings import Settings
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store

S = JobState
SUCCESS_PATH = [S.PROVISIONING, S.BOOTING, S.VERIFYING, S.BOOTSTRAPPING, S.TRAINING, S.COLLECTING]


@dataclass
class FakeFleet:
    """Records in `store`, instances in `provider`."""

    store: Store
    settings: Settings
    provider: FakeProvider = field(default_factory=FakeProvider)
    _jobs: int = 0

    def sweep(self, budget_usd: float | None = None, **job: Any) -> str:
        """A sweep with one job in QUEUED (`job`: dotted overrides of the tiny job); returns
        the job id."""
        self._jobs += 1
        sweep_id, job_id = f"sw{self._jobs}", f"sw{self._jobs}-0000"
        now = time.time()
        config = tiny_job("tiny-lm", "corpus.jsonl", **job)
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

    def pack(
        self, members: int = 3, own: dict[int, dict[str, Any]] | None = None
    ) -> tuple[str, list[str]]:
        """A sweep of `members` tiny jobs in one pack job, QUEUED on its first attempt
        (`own[i]`: dotted overrides of member i's job); returns (pack id, member ids)."""
        self._jobs += 1
        sweep_id = f"sw{self._jobs}"
        now = time.time()
        jobs = [
            JobRecord(
                job_id=f"{sweep_id}-{i:04d}",
                sweep_id=sweep_id,
                index=i,
                name=f"k{i}",
                state=S.QUEUED,
                attempt=1,
                spec={
                    "config": tiny_job("tiny-lm", "c.jsonl", **(own or {}).get(i, {})),
                    "provider": {"name": "local"},
                    "overrides": {},
                },
                created_at=now,
                updated_at=now,
                pack_id=f"{sweep_id}-p000",
            )
            for i in range(members)
        ]
        pack = jobs[0].model_copy(
            update={
                "job_id": f"{sweep_id}-p000",
                "pack_id": None,
                "members": [j.job_id for j in jobs],
            }
        )
        sweep = SweepRecord(
            sweep_id=sweep_id,
            name="p",
            created_at=now,
            spec={},
            job_ids=[j.job_id for j in jobs],
            pack_ids=[pack.job_id],
        )
        self.store.create_sweep(sweep, jobs, [pack])
        self.store.start_first_attempt(pack.job_id)
        return pack.job_id, pack.members

    def launch(
        self,
        job_id: str,
        state: JobState = S.TRAINING,
        price_per_hour: float = 1.0,
        launched_ago_s: float = 60.0,
        provider: str = "local",
    ) -> InstanceRecord:
        """Walk the job to `state` with an instance for its current attempt (`provider`: the
        name its record carries; "local" instances share this machine's disk and move their
        checkpoints through the store themselves, others over SFTP)."""
        job = self.store.job(job_id)
        if job.state is S.PREEMPTED:
            self.store.begin_attempt(job_id, job.attempt + 1)
            job = self.store.job(job_id)
        instance_id = f"fake-{job_id}-{job.attempt}"
        name = instance_name(job_id, job.attempt)
        self.provider.add(instance_id, name)
        record = InstanceRecord(
            instance_id=instance_id,
            provider=provider,
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
        path = SUCCESS_PATH[: SUCCESS_PATH.index(state) + 1]
        for target in path[1 if job.state is S.PROVISIONING else 0 :]:
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
