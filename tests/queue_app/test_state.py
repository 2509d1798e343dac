"""The state machine: legal, illegal and stale transitions (fakeredis, fast)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from queue_app.errors import IllegalTransition, NotFoundError, StaleAttempt
from queue_app.keys import attempt_key, events_key, job_key
from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.statemachine import (
    INSTANCE_TRANSITIONS,
    JOB_TRANSITIONS,
    SEGMENT_TRANSITIONS,
    TERMINAL_STATES,
    InstanceState,
    JobState,
    SegmentStatus,
)
from queue_app.store import Store
from tests.support.waiting import wait_for

S = JobState
DONE = SegmentStatus.DONE


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True))


def make_sweep(store: Store, n: int = 2) -> list[str]:
    now = time.time()
    ids = [f"sw1-{i:04d}" for i in range(n)]
    sweep = SweepRecord(sweep_id="sw1", name="t", created_at=now, spec={}, job_ids=ids)
    jobs = [
        JobRecord(
            job_id=j,
            sweep_id="sw1",
            index=i,
            name=j,
            state=S.QUEUED,
            attempt=1,
            spec={"k": i},
            created_at=now,
            updated_at=now,
        )
        for i, j in enumerate(ids)
    ]
    store.create_sweep(sweep, jobs)
    return ids


def test_records_round_trip(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    job = store.job(job_id)
    assert job.state is S.QUEUED and job.attempt == 1 and job.spec == {"k": 0}
    assert [j.job_id for j in store.sweep_jobs("sw1")] == ["sw1-0000", "sw1-0001"]
    assert store.sweep("sw1").job_ids == ["sw1-0000", "sw1-0001"]


def test_legal_path_to_success_records_history(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    path = [
        S.PROVISIONING,
        S.BOOTING,
        S.VERIFYING,
        S.BOOTSTRAPPING,
        S.TRAINING,
        S.COLLECTING,
        S.TERMINATING,
        S.SUCCEEDED,
    ]
    previous = S.QUEUED
    for target in path:
        assert store.transition(job_id, 1, target) is previous
        previous = target
    assert store.job(job_id).state is S.SUCCEEDED
    assert [e["to"] for e in store.events(job_id)] == ["QUEUED", *map(str, path)]


def test_illegal_transition_raises_and_changes_nothing(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    with pytest.raises(IllegalTransition, match="QUEUED -> TRAINING"):
        store.transition(job_id, 1, S.TRAINING)
    assert store.job(job_id).state is S.QUEUED


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_have_no_exit(terminal: JobState) -> None:
    assert JOB_TRANSITIONS[terminal] == frozenset()


def test_stale_attempt_is_fenced(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.transition(job_id, 1, S.PROVISIONING)
    store.transition(job_id, 1, S.PREEMPTED, reason="spot interruption")
    store.begin_attempt(job_id, 2)
    job = store.job(job_id)
    assert (job.state, job.attempt) == (S.PROVISIONING, 2)
    with pytest.raises(StaleAttempt):
        store.transition(job_id, 1, S.BOOTING)
    with pytest.raises(StaleAttempt):
        store.update_job(job_id, 1, progress={"step": 5})
    store.update_job(job_id, 2, progress={"step": 5})
    assert store.job(job_id).progress == {"step": 5}


def test_begin_attempt_is_idempotent_and_needs_preempted(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.transition(job_id, 1, S.PROVISIONING)
    with pytest.raises(IllegalTransition):
        store.begin_attempt(job_id, 2)
    store.transition(job_id, 1, S.PREEMPTED)
    store.begin_attempt(job_id, 2)
    store.begin_attempt(job_id, 2)  # a redelivered resume repeats it harmlessly
    assert store.job(job_id).attempt == 2
    assert [a.attempt for a in store.attempts(job_id)] == [2]  # attempt 1 record never made


def test_a_new_attempt_has_its_record_from_the_move_that_begins_it(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.transition(job_id, 1, S.PROVISIONING)
    with pytest.raises(IllegalTransition):
        store.begin_attempt(job_id, 2)
    assert not store.r.exists(attempt_key(job_id, 2))  # a refused move makes no record
    store.transition(job_id, 1, S.PREEMPTED)
    store._job_cas(  # the move alone, as a reader racing begin_attempt would see it
        (job_key(job_id), events_key(job_id), attempt_key(job_id, 2)),
        job_id,
        1,
        S.PROVISIONING,
        new_attempt=2,
        fields={},
    )
    record = store.attempt(job_id, 2)
    assert (record.job_id, record.attempt, record.segment) == (job_id, 2, 0)
    assert record.started_at == pytest.approx(store.job(job_id).updated_at)


def test_allow_same_makes_repeats_harmless(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.transition(job_id, 1, S.PROVISIONING)
    assert store.transition(job_id, 1, S.PROVISIONING, allow_same=True) is S.PROVISIONING
    with pytest.raises(IllegalTransition):
        store.transition(job_id, 1, S.PROVISIONING)


def test_transition_sets_reason_and_fields(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.transition(job_id, 1, S.FAILED, reason="verify_gpu: no CUDA", instance_id="i-1")
    job = store.job(job_id)
    assert job.reason == "verify_gpu: no CUDA" and job.instance_id == "i-1"
    assert job.terminal


def test_state_cannot_be_written_around_the_machine(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    with pytest.raises(ValueError, match="transition"):
        store.update_job(job_id, 1, state="SUCCEEDED")


def test_missing_job(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.transition("nope", 1, S.PROVISIONING)
    with pytest.raises(NotFoundError):
        store.job("nope")


INSTANCE = InstanceRecord(
    instance_id="i-1",
    provider="local",
    name="sf-x-1",
    job_id="j",
    sweep_id="s",
    attempt=1,
    state=InstanceState.LAUNCHED,
    launched_at=1000.0,
    price_per_hour=3.6,
)


def test_instance_cost_clock(store: Store) -> None:
    rec = INSTANCE
    store.register_instance(rec)
    store.register_instance(rec.model_copy(update={"launched_at": 2000.0}))
    assert store.instance("i-1").launched_at == 1000.0
    assert [i.instance_id for i in store.instances(live_only=True)] == ["i-1"]
    store.mark_instance_terminated("i-1", at=1100.0)
    store.mark_instance_terminated("i-1", at=5000.0)
    inst = store.instance("i-1")
    assert inst.state is InstanceState.TERMINATED
    assert inst.cost_usd() == pytest.approx(0.1)
    assert store.instances(live_only=True) == []


def test_delete_sweep_rolls_back(store: Store) -> None:
    make_sweep(store)
    store.delete_sweep("sw1")
    assert store.r.keys("*") == []


def test_segment_protocol(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.start_first_attempt(job_id)
    assert store.claim_segment(job_id, 1, 1)
    assert store.claim_segment(job_id, 1, 1)  # still only sent: may be re-sent
    assert not store.claim_segment(job_id, 1, 2)  # segment 1 not done yet
    assert store.start_segment(job_id, 1, 1, runner="first")
    assert not store.start_segment(job_id, 1, 1, runner="again")  # a duplicate does nothing
    assert store.start_segment(job_id, 1, 1, runner="first")  # its own start, sent twice
    assert not store.claim_segment(job_id, 1, 1)  # running: no re-send
    assert store.finish_segment(job_id, 1, 1, DONE, segment_checkpoint="step-10")
    assert not store.finish_segment(job_id, 1, 1, DONE)
    assert store.claim_segment(job_id, 1, 2)
    att = store.attempt(job_id, 1)
    assert (att.segment, att.segment_status, att.segment_done) == (2, SegmentStatus.SENT, False)
    store.transition(job_id, 1, S.PROVISIONING)
    store.transition(job_id, 1, S.PREEMPTED)
    store.begin_attempt(job_id, 2)
    with pytest.raises(StaleAttempt):
        store.start_segment(job_id, 1, 2, runner="late")


def test_a_renewed_lease_outlives_its_ttl_while_held(store: Store) -> None:
    with store.lease("pull", 0.3, renew=True) as held:
        assert held
        held_since = time.monotonic()
        while time.monotonic() - held_since < 1.0:  # three times its ttl, looked at all along
            with store.lease("pull", 0.3) as other:
                assert not other
            time.sleep(0.05)
    with store.lease("pull", 0.3) as again:
        assert again  # released on the way out


def test_a_lease_whose_holder_stopped_lapses_after_its_ttl(store: Store) -> None:
    # What a SIGKILLed holder leaves: nobody renews or releases it.
    store.r.set("sf:lease:pull", "dead-holder", px=300)
    with store.lease("pull", 0.3) as held:
        assert not held
    wait_for("the lease to lapse", lambda: not store.r.exists("sf:lease:pull"), 10)
    with store.lease("pull", 0.3) as held:
        assert held


@pytest.mark.parametrize(
    ("enum", "table"),
    [(JobState, JOB_TRANSITIONS), (InstanceState, INSTANCE_TRANSITIONS)],
)
def test_every_state_has_a_row_of_the_table(enum: type, table: dict) -> None:
    assert set(table) == set(enum)


def test_every_segment_status_has_a_row_and_a_fresh_attempt_only_sends() -> None:
    assert set(SEGMENT_TRANSITIONS) == {None, *SegmentStatus}
    assert SEGMENT_TRANSITIONS[None] == {SegmentStatus.SENT}


def test_a_segment_move_outside_the_table_is_refused(store: Store) -> None:
    [job_id, _] = make_sweep(store)
    store.start_first_attempt(job_id)
    assert store.claim_segment(job_id, 1, 1)
    with pytest.raises(ValueError, match="running -> sent"):
        store.finish_segment(job_id, 1, 1, SegmentStatus.SENT)
    assert store.attempt(job_id, 1).segment_status is SegmentStatus.SENT


def test_a_terminated_instance_never_goes_back_to_terminating(store: Store) -> None:
    store.register_instance(INSTANCE)
    assert store.mark_instance_terminating("i-1")
    assert store.mark_instance_terminating("i-1")  # a repeat
    store.mark_instance_terminated("i-1", at=1100.0)
    assert not store.mark_instance_terminating("i-1")
    inst = store.instance("i-1")
    assert inst.state is InstanceState.TERMINATED and inst.terminated_at == 1100.0
    with pytest.raises(NotFoundError):
        store.mark_instance_terminated("i-unknown")
