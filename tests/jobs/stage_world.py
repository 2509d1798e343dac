"""One delivery of a stage message, in-process: the stage's Celery task applied eagerly against
the test Redis, a fake provider (jobs.providers.fake) and fake SSH (jobs.ssh_fake), with the
task's `retry` and `replace` recorded instead of executed. What the delivery did comes back as
data (`Delivery`), so a test sees a poll's countdown or a resume's replacement chain without a
Celery worker, a broker or sshd."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from celery import Signature, Task
from celery.exceptions import Ignore, Retry

from jobs.pipeline import JobRef
from jobs.providers import InstanceStatus
from jobs.remote import layout_for, worker_hostname
from jobs.ssh_fake import FakeSSH
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.statemachine import JobState
from tests.support.fake_fleet import FakeFleet


@dataclass
class Delivery:
    """What one delivery of a stage message did."""

    state: str
    """Celery's outcome: SUCCESS (returned), RETRY (polls again), IGNORED (did nothing, or
    was replaced), REJECTED (handed back to the broker), FAILURE (raised)."""
    value: Any
    """What the stage returned (the next stage's message, or terminate's JobResult)."""
    countdown: float | None = None
    """Seconds until the retry, when it polls again."""
    replacement: Signature | None = None
    """The chain that replaced the task (a resume as attempt+1)."""


@dataclass
class StageWorld(FakeFleet):
    """Records in the test Redis, instances at a fake provider, a fake SSH, and what the
    stages sent to the broker and asked of Celery."""

    ssh: FakeSSH = field(default_factory=FakeSSH)
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Tasks the stages sent (name, kwargs, task_id)."""
    workers_up: set[str] = field(default_factory=set)
    """Celery node names that answer a ping."""
    _retry_countdown: float | None = None
    _replacement: Signature | None = None

    def ref(self, job_id: str, attempt: int | None = None) -> JobRef:
        job = self.store.job(job_id)
        attempt = job.attempt if attempt is None else attempt
        return JobRef(job_id=job_id, attempt=attempt, sweep_id=job.sweep_id)

    def deliver(self, task: Task, job_id: str, attempt: int | None = None) -> Delivery:
        """Run one delivery of `task`'s message for the job's attempt (default: current)."""
        self._retry_countdown, self._replacement = None, None
        outcome = task.apply(args=(self.ref(job_id, attempt).message(),))
        return Delivery(outcome.state, outcome.result, self._retry_countdown, self._replacement)

    def passed_on(self, job_id: str) -> Delivery:
        """The delivery of a stage that handed the job on to the next stage: it finished its
        work, found it done already, or failed the job (a failure travels as data)."""
        return Delivery("SUCCESS", self.ref(job_id).message())

    def failure(self, job_id: str, instance: InstanceRecord | None = None) -> str:
        """The reason the job FAILED for, once it did and `instance` was terminated."""
        job = self.job(job_id)
        assert job.state is JobState.FAILED, f"{job_id} is {job.state}, not FAILED"
        if instance is not None:
            status = self.provider.instances[instance.instance_id].status
            assert status is InstanceStatus.TERMINATED, f"{instance.instance_id} is {status}"
        return job.reason or ""

    def job(self, job_id: str) -> JobRecord:
        return self.store.job(job_id)

    def attempt(self, job_id: str, attempt: int = 1) -> AttemptRecord:
        return self.store.attempt(job_id, attempt)

    def instance(self, instance_id: str) -> InstanceRecord:
        return self.store.instance(instance_id)

    def remote_tree(self, instance: InstanceRecord, local: Path, remote: str) -> None:
        """Put the files under `local` on the instance under `remote` (relative to its run
        directory), as training would have written them."""
        root = f"{layout_for(instance).run_dir}/{remote}"
        files = self.ssh.files[instance.instance_id]
        for path in local.rglob("*"):
            if path.is_file():
                files[f"{root}/{path.relative_to(local).as_posix()}"] = path.read_bytes()

    def worker_answers(self, job_id: str, instance: InstanceRecord) -> None:
        """The job's GPU-side worker on `instance` answers pings from now on."""
        attempt = self.job(job_id).attempt
        self.workers_up.add(worker_hostname(job_id, attempt, instance.instance_id))

    # ---- what the stages reach instead of the broker (see the stage_world fixture) ---------

    def record_send(
        self,
        name: str,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **_: Any,
    ) -> None:
        """A sent task; a chain's head (sent by Celery with `args`) with them as `args`."""
        sent = {"name": name, "kwargs": kwargs or {}, "task_id": task_id}
        self.sent.append({**sent, "args": list(args)} if args else sent)

    def answer_ping(self, destination: list[str], timeout: float = 1.0) -> list[dict[str, Any]]:
        return [{node: {"ok": "pong"}} for node in destination if node in self.workers_up]

    def record_retry(self, *_: Any, countdown: float | None = None, **__: Any) -> NoReturn:
        self._retry_countdown = countdown
        raise Retry(when=countdown)

    def record_replace(self, sig: Signature) -> NoReturn:
        self._replacement = sig
        raise Ignore("replaced")


def ago(seconds: float) -> float:
    """The timestamp `seconds` ago."""
    return time.time() - seconds
