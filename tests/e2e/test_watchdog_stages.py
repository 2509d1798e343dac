"""Preemption during each stage other than training, end to end: one sweep, one job per case,
each job's instance killed by the local provider while that job is in the chosen stage. A
preemption while a resumed attempt is bootstrapping is one more preemption, not a failure.
Every job ends SUCCEEDED and the sweep finalizes once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from queue_app.errors import NotFoundError
from queue_app.records import AttemptRecord, JobRecord
from queue_app.statemachine import JobState
from tests.e2e.harness import LOST, ControlPlane, start_plane
from tests.support.sweeps import write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

Moment = tuple[int, Callable[[JobRecord, AttemptRecord], bool]]
"""A job's attempt, and when in that attempt its instance is killed."""


def in_state(state: JobState) -> Callable[[JobRecord, AttemptRecord], bool]:
    return lambda job, _: job.state is state


def launched(job: JobRecord, attempt: AttemptRecord) -> bool:
    """As soon as the instance is registered, before it ever becomes ready."""
    return attempt.instance_id is not None


def collecting(job: JobRecord, attempt: AttemptRecord) -> bool:
    """Collect is next: training is done and its final checkpoint pulled (the control plane is
    frozen for the kill, see FROZEN: collect itself takes a fraction of a second)."""
    done = attempt.segment_done and attempt.pulled_segment == attempt.segment
    return job.state is JobState.TRAINING and done


# Every moment lasts a second or more (a boot delay, a probe or an upload over SSH); six watchers
# polling every 2 ms kept a core busy and, on a loaded machine, missed moments.
POLL_S = 0.02
# Cases whose kill happens with the control worker stopped (SIGSTOP, kill, SIGCONT), so that
# the stage cannot finish between the moment being seen and the instance being dead.
FROZEN = {"collect"}
CASES: dict[str, list[Moment]] = {
    "provision": [(1, launched)],
    "await_ready": [(1, in_state(JobState.BOOTING))],
    "verify_gpu": [(1, in_state(JobState.VERIFYING))],
    "bootstrap": [(1, in_state(JobState.BOOTSTRAPPING))],
    "collect": [(1, collecting)],
    "bootstrap of a resumed attempt": [
        (1, in_state(JobState.TRAINING)),
        (2, in_state(JobState.BOOTSTRAPPING)),
    ],
}


def test_preemption_during_each_stage_is_resumed(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, concurrency=6, quick_verdicts=True)
    sweep_file = write_sweep(
        tmp_path,
        fleet_assets,
        grid={"train.seed": list(range(len(CASES)))},
        provider={"name": "local", "boot_delay_s": 2},
    )
    sweep_id = plane.submit(sweep_file)
    job_ids = [j.job_id for j in plane.store.sweep_jobs(sweep_id)]
    case_of = dict(zip(job_ids, CASES, strict=True))

    plans = {j: (list(CASES[c]), c in FROZEN) for j, c in case_of.items()}
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
    plane: ControlPlane, plans: dict[str, tuple[list[Moment], bool]], timeout_s: float
) -> None:
    """Kill each job's instance of attempt k once the job, at attempt k, reaches the moment;
    one watcher thread per job, so a slow kill of one instance never delays another."""
    deadline = time.monotonic() + timeout_s
    threads = [
        threading.Thread(target=_watch, args=(plane, job_id, plan, frozen, deadline))
        for job_id, (plan, frozen) in plans.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missed = {job_id: plan for job_id, (plan, _) in plans.items() if plan}
    assert not missed, f"never reached these moments: {missed}"


def _watch(
    plane: ControlPlane, job_id: str, plan: list[Moment], frozen: bool, deadline: float
) -> None:
    provider = plane.local_provider()
    while plan and time.monotonic() < deadline:
        attempt, moment = plan[0]
        job = plane.store.job(job_id)
        try:
            record = plane.store.attempt(job_id, attempt)
        except NotFoundError:  # provision has not begun the attempt yet
            record = None
        if job.attempt == attempt and record and record.instance_id and moment(job, record):
            with _frozen(plane) if frozen else contextlib.nullcontext():
                provider.preempt(record.instance_id)
            plan.pop(0)
        time.sleep(POLL_S)


@contextlib.contextmanager
def _frozen(plane: ControlPlane) -> Iterator[None]:
    """The control worker's processes stopped (SIGSTOP) for the duration."""
    group = plane.procs["control"].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)
