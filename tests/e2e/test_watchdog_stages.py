"""Preemption during each stage other than training, end to end: one sweep, one job per case,
each job's instance killed by the local provider while that job is in the chosen stage. A
preemption while a resumed attempt is bootstrapping is one more preemption, not a failure.
Every job ends SUCCEEDED and the sweep finalizes once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from queue_app.errors import NotFoundError
from queue_app.records import AttemptRecord, JobRecord
from queue_app.statemachine import JobState
from tests.e2e.harness import LOST, ControlPlane, start_plane
from tests.e2e.held_stages import arm, reached, release
from tests.support.sweeps import write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

Moment = tuple[int, Callable[[ControlPlane, JobRecord, AttemptRecord], bool]]
"""A job's attempt, and when in that attempt its instance is killed."""


def in_state(state: JobState) -> Callable[[ControlPlane, JobRecord, AttemptRecord], bool]:
    return lambda _, job, __: job.state is state


def launched(_: ControlPlane, job: JobRecord, attempt: AttemptRecord) -> bool:
    """As soon as the instance is registered, before it ever becomes ready."""
    return attempt.instance_id is not None


def held_at(stage: str) -> Callable[[ControlPlane, JobRecord, AttemptRecord], bool]:
    """The stage waits at its start (tests.e2e.held_stages, armed at submission): for a stage
    that takes a fraction of a second, which no poll of the job's state hits on every machine."""
    return lambda plane, job, attempt: reached(plane.home, stage, job.job_id, attempt.attempt)


# Every polled moment lasts a second or more (a boot delay, a probe or an upload over SSH); six
# watchers polling every 2 ms kept a core busy and, on a loaded machine, missed moments.
POLL_S = 0.02
# The stage each held case holds (at attempt 1) until its kill.
HELD = {"collect": "collect"}
CASES: dict[str, list[Moment]] = {
    "provision": [(1, launched)],
    "await_ready": [(1, in_state(JobState.BOOTING))],
    "verify_gpu": [(1, in_state(JobState.VERIFYING))],
    "bootstrap": [(1, in_state(JobState.BOOTSTRAPPING))],
    "collect": [(1, held_at("collect"))],
    "bootstrap of a resumed attempt": [
        (1, in_state(JobState.TRAINING)),
        (2, in_state(JobState.BOOTSTRAPPING)),
    ],
}


def test_preemption_during_each_stage_is_resumed(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, concurrency=6, quick_verdicts=True, app="tests.e2e.held_stages")
    sweep_file = write_sweep(
        tmp_path,
        fleet_assets,
        grid={"train.seed": list(range(len(CASES)))},
        provider={"name": "local", "boot_delay_s": 2},
    )
    sweep_id = plane.submit(sweep_file)
    job_ids = [j.job_id for j in plane.store.sweep_jobs(sweep_id)]
    case_of = dict(zip(job_ids, CASES, strict=True))
    for job_id, case in case_of.items():
        if case in HELD:
            arm(plane.home, HELD[case], job_id, 1)

    plans = {j: list(CASES[c]) for j, c in case_of.items()}
    _kill_at_each_moment(plane, plans, timeout_s=300)

    sweep = plane.wait_sweep(sweep_id, timeout_s=400)
    assert sweep.finalize_runs == 1
    for job_id, case in case_of.items():
        kills = len(CASES[case])
        job = plane.store.job(job_id)
        assert (job.state, job.attempt, job.preemptions) == (
            JobState.SUCCEEDED,
            kills + 1,
            kills,
        ), case
        for attempt in plane.store.attempts(job_id)[:kills]:
            assert LOST.search(attempt.end_reason or ""), (case, attempt.end_reason)
    assert plane.running_instances() == []


def _kill_at_each_moment(
    plane: ControlPlane, plans: dict[str, list[Moment]], timeout_s: float
) -> None:
    """Kill each job's instance of attempt k once the job, at attempt k, reaches the moment;
    one watcher thread per job, so a slow kill of one instance never delays another."""
    deadline = time.monotonic() + timeout_s
    threads = [
        threading.Thread(target=_watch, args=(plane, job_id, plan, deadline))
        for job_id, plan in plans.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missed = {job_id: plan for job_id, plan in plans.items() if plan}
    assert not missed, f"never reached these moments: {missed}"


def _watch(plane: ControlPlane, job_id: str, plan: list[Moment], deadline: float) -> None:
    provider = plane.local_provider()
    while plan and time.monotonic() < deadline:
        attempt, moment = plan[0]
        job = plane.store.job(job_id)
        try:
            record = plane.store.attempt(job_id, attempt)
        except NotFoundError:  # provision has not begun the attempt yet
            record = None
        if job.attempt == attempt and record and record.instance_id and moment(plane, job, record):
            provider.preempt(record.instance_id)
            release(plane.home, job_id)
            plan.pop(0)
        time.sleep(POLL_S)
