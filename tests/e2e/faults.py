"""What every fault scenario does around its fault: a 2-job sweep on the local provider, a
watcher that samples it while it runs, the moment to strike, and the checks that it converged.

A scenario converged when the sweep's finalizer ran exactly once, every job ended in the state
the scenario expects, no instance is left running at the provider, and no job ever had two
live attempts: two instances of it running at once that nobody had asked to terminate.

Steps of training lost: for each attempt that a later one replaced, the last step it reached
(its heartbeat file on the instance, or the last progress it reported) minus the step of the
checkpoint the next attempt resumed from.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from jobs.providers import ProviderError
from jobs.remote import layout_for
from queue_app.records import JobRecord, SweepRecord
from queue_app.statemachine import TERMINAL_STATES, InstanceState, JobState
from sae.checkpoint import list_checkpoints, verify_checkpoint
from tests.e2e.harness import ControlPlane
from tests.e2e.report import Row, scenario
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for

SWEEP_TIMEOUT_S = 420.0
# 128 steps in segments of at most 0.3 s: several pulled checkpoints per job however fast the
# machine trains (two jobs share two cores), so a fault can strike mid-training.
TOKENS_PER_JOB = 65_536
SEGMENT_MINUTES = 0.005


def submit_sweep(
    plane: ControlPlane, directory: Path, assets: dict[str, Path], name: str, **overrides: Any
) -> str:
    """Two tiny jobs (k = 4, 8) that train in several short segments each: one to strike, one
    that must go on untouched (the fault scenarios' CPU is mostly these jobs' GPU-side workers)."""
    run = {"train.total_tokens": TOKENS_PER_JOB, "segment_minutes": SEGMENT_MINUTES, **overrides}
    path = write_sweep(directory, assets, grid={"sae.k": [4, 8]}, name=name, **run)
    return plane.submit(path)


# ---- watching a running sweep --------------------------------------------------------------------


@dataclass
class Watch:
    """Samples a sweep every 0.2 s in a thread: the last training step each attempt reported,
    and any moment at which a job had two live instances."""

    plane: ControlPlane
    sweep_id: str
    steps: dict[tuple[str, int], int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-watch")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.sample()
            except (redis.exceptions.RedisError, ProviderError, OSError):
                continue  # Redis restarting, an instance directory going away

    def sample(self) -> None:
        store = self.plane.store
        for job in store.sweep_jobs(self.sweep_id):
            step = int(job.progress.get("step") or 0)
            key = (job.job_id, job.attempt)
            self.steps[key] = max(self.steps.get(key, 0), step)
        running = set(self.plane.running_instances())
        live: dict[str, list[str]] = {}
        for instance in store.instances(live_only=True):
            if instance.instance_id in running and instance.terminate_requested_at is None:
                live.setdefault(instance.job_id, []).append(instance.instance_id)
        for job_id, ids in live.items():
            if len(ids) > 1:
                self.overlaps.append(f"{job_id}: {', '.join(sorted(ids))} live at once")


def mid_training(plane: ControlPlane, sweep_id: str, pulled: int = 1) -> JobRecord:
    """Wait until the sweep's first job trains past its `pulled`-th checkpoint pulled into the
    store (the moment a fault costs the most), the other jobs having started too."""

    def ready() -> JobRecord | None:
        jobs = plane.store.sweep_jobs(sweep_id)
        job = jobs[0]
        if any(j.state in (JobState.QUEUED, JobState.PROVISIONING) for j in jobs):
            return None
        if job.state in (JobState.COLLECTING, JobState.TERMINATING, *TERMINAL_STATES):
            raise AssertionError(f"{job.job_id} finished training before the fault could strike")
        if job.state is not JobState.TRAINING or not job.latest_checkpoint:
            return None
        if len(pulled_checkpoints(plane, job)) < pulled:
            return None
        step = checkpoint_step(job.latest_checkpoint)
        return job if int(job.progress.get("step") or 0) > step else None

    return wait_for("a job training past a pulled checkpoint", ready, timeout_s=300, every_s=0.05)


def pulled_checkpoints(plane: ControlPlane, job: JobRecord) -> list[Path]:
    """The job's checkpoints in the control plane's store that verify, oldest first."""
    directory = plane.settings.checkpoints_dir(job.sweep_id, job.job_id)
    return [p for p in list_checkpoints(directory) if verify_checkpoint(p)]


def checkpoint_step(name: str) -> int:
    return int(name.removeprefix("step-"))


def instance_of(plane: ControlPlane, job: JobRecord) -> str:
    instance_id = plane.store.attempt(job.job_id, job.attempt).instance_id
    assert instance_id, f"{job.job_id} attempt {job.attempt} has no instance"
    return instance_id


# ---- convergence ---------------------------------------------------------------------------------


@dataclass
class Converged:
    sweep: SweepRecord
    jobs: list[JobRecord]
    converged_at: float


def converge(
    plane: ControlPlane,
    sweep_id: str,
    watch: Watch,
    expect: JobState = JobState.SUCCEEDED,
) -> Converged:
    """Wait for the sweep to finish, the fleet to be empty and no message about the sweep to be
    left in Redis, then check every promise."""
    store = plane.store
    wait_for(
        f"sweep {sweep_id} to finalize",
        lambda: store.sweep(sweep_id).finished_at,
        SWEEP_TIMEOUT_S,
        every_s=0.2,
    )
    wait_for("no instance left at the provider", lambda: not plane.running_instances(), 120)
    converged_at = time.time()
    plane.wait_settled(sweep_id)  # whatever could run the finalizer again has run
    sweep = store.sweep(sweep_id)
    jobs = store.sweep_jobs(sweep_id)
    assert sweep.finalize_runs == 1, f"finalize_sweep ran {sweep.finalize_runs} times"
    states = {j.job_id: f"{j.state} ({j.reason})" for j in jobs}
    assert all(j.state is expect for j in jobs), states
    assert watch.overlaps == [], watch.overlaps
    for instance in store.instances():
        assert instance.state is InstanceState.TERMINATED, instance
    assert store.instances(live_only=True) == []
    for job in jobs:
        attempts = store.attempts(job.job_id)
        assert [a.attempt for a in attempts] == list(range(1, job.attempt + 1))
        for earlier in attempts[:-1]:
            assert earlier.ended_at and earlier.end_reason, earlier
    return Converged(sweep, jobs, converged_at)


def steps_lost(plane: ControlPlane, watch: Watch, jobs: list[JobRecord]) -> int:
    """Training steps that replaced attempts did and their successors did again."""
    lost = 0
    for job in jobs:
        attempts = plane.store.attempts(job.job_id)
        for before, after in itertools.pairwise(attempts):
            reached = max(
                watch.steps.get((job.job_id, before.attempt), 0),
                _heartbeat(plane, before.instance_id),
            )
            resumed = checkpoint_step(after.resume_from) if after.resume_from else 0
            lost += max(0, reached - resumed)
    return lost


def _heartbeat(plane: ControlPlane, instance_id: str | None) -> int:
    """The last step the trainer on `instance_id` wrote to its heartbeat file (0 if none)."""
    if instance_id is None:
        return 0
    path = Path(layout_for(plane.store.instance(instance_id)).run_dir) / "heartbeat.json"
    try:
        return int(json.loads(path.read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


def run_scenario(
    plane: ControlPlane,
    directory: Path,
    assets: dict[str, Path],
    name: str,
    inject: Callable[[JobRecord], object],
    *,
    preemptions: int = 0,
    pulled: int = 1,
    **overrides: Any,
) -> Converged:
    """Submit the sweep, strike with `inject` once its first job trains past its `pulled`-th
    pulled checkpoint, wait for it to converge; the scenario's row records how it went."""
    with scenario(name) as row:
        sweep_id = submit_sweep(plane, directory, assets, name, **overrides)
        with Watch(plane, sweep_id) as watch:
            job = mid_training(plane, sweep_id, pulled)
            fault_at = time.time()
            inject(job)
            done = converge(plane, sweep_id, watch)
        record(row, plane, watch, done, fault_at)
        assert row.preemptions == preemptions, [(j.job_id, j.preemptions) for j in done.jobs]
        return done


def record(row: Row, plane: ControlPlane, watch: Watch, done: Converged, fault_at: float) -> None:
    row.converge_s = round(done.converged_at - fault_at, 1)
    row.steps_lost = steps_lost(plane, watch, done.jobs)
    row.preemptions = sum(j.preemptions for j in done.jobs)
    row.attempts = sum(j.attempt for j in done.jobs)
    row.sweep_s = round(done.converged_at - done.sweep.created_at, 1)
