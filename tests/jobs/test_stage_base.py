"""What stages hand the chain when things go wrong: a duplicate message for a stage its job is
past passes the job on without running the stage again (a redelivered poll once failed a job
that was terminating: "illegal transition TERMINATING -> TRAINING"), and a terminate that fails
still ends the chain with the job's result (the sweep's finalizer once got a bare job ref); a
paused job's stage waits while the queue is drained."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import Retry

import jobs.terminate
from jobs.pipeline import STAGES, JobRef, job_is_past
from jobs.stages import collect, provision, supervise_training, terminate
from queue_app.admission import set_drained
from queue_app.records import JobRecord, SweepRecord
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import stored_spec


def _job_in(store: Store, state: JobState) -> JobRef:
    now = time.time()
    job = JobRecord(
        job_id="sw1-0000",
        sweep_id="sw1",
        index=0,
        name="j",
        state=state,
        attempt=1,
        spec=stored_spec(),
        created_at=now,
        updated_at=now,
    )
    store.create_sweep(
        SweepRecord(sweep_id="sw1", name="s", created_at=now, spec={}, job_ids=[job.job_id]),
        [job],
    )
    return JobRef(job_id=job.job_id, attempt=1, sweep_id="sw1")


@pytest.mark.parametrize(
    ("task", "state"),
    [
        (supervise_training, JobState.COLLECTING),
        (supervise_training, JobState.TERMINATING),
        (collect, JobState.TERMINATING),
    ],
)
def test_a_copy_of_a_stage_the_job_is_past_passes_it_on(
    task: object, state: JobState, settings: Settings, store: Store
) -> None:
    ref = _job_in(store, state)
    result = task.apply(args=(ref.message(),)).get()  # type: ignore[attr-defined]
    assert result == ref.message()
    job = store.job(ref.job_id)
    assert (job.state, job.reason) == (state, None)
    assert [e["to"] for e in store.events(ref.job_id)] == [str(state)]  # nothing transitioned


def test_each_stage_is_past_only_beyond_its_own_states() -> None:
    assert not job_is_past("supervise_training", JobState.TRAINING)
    assert job_is_past("supervise_training", JobState.COLLECTING)
    assert not job_is_past("collect", JobState.COLLECTING)
    assert job_is_past("provision", JobState.BOOTING)
    assert not job_is_past("terminate", JobState.SUCCEEDED)  # terminate always has work
    assert not any(job_is_past(stage, JobState.PREEMPTED) for stage in STAGES)


def test_a_failing_terminate_still_hands_the_chord_a_job_result(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _job_in(store, JobState.TERMINATING)
    store.start_first_attempt(ref.job_id)

    def broken(_: object) -> list[str]:
        raise RuntimeError("provider client crashed")

    monkeypatch.setattr(jobs.terminate, "_unconfirmed", broken)
    result = terminate.apply(args=(ref.message(),)).get()
    assert (result["job_id"], result["state"]) == (ref.job_id, "FAILED")
    assert result["reason"] == "terminate: provider client crashed"


@pytest.mark.parametrize(("task", "attempt"), [(supervise_training, 1), (provision, 2)])
def test_a_paused_job_waits_while_the_queue_is_drained(
    task: object, attempt: int, settings: Settings, store: Store
) -> None:
    """Its stage message polls, holding the chord slot; nothing resumes or launches."""
    ref = _job_in(store, JobState.PAUSED).model_copy(update={"attempt": attempt})
    set_drained(store.r, "drain", {})

    with pytest.raises(Retry):  # called directly, a poll raises instead of sending itself
        task(ref.message())  # type: ignore[operator]

    job = store.job(ref.job_id)
    assert (job.state, job.attempt) == (JobState.PAUSED, 1)
