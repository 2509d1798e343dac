"""Cancelling a job names the checkpoint it keeps (or says there is none) and leaves finished or
terminating jobs alone; stopping training waits for the segment in flight, and one that never
checkpoints is reported lost, by job."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from jobs.objectstore import checkpoints_prefix, open_store, verify_folder
from ops.steps import StepReport
from ops.stopping import cancel_job, stop_training
from ops.teardown import TEARDOWN_REASON, stop_provisioning
from ops.teardown_providers import Fleet
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from sae.checkpoint import write_checkpoint
from tests.queue_app.records import make_sweep
from tests.support.fake_fleet import FakeFleet
from tests.support.instance_uploads import start_upload


@pytest.fixture
def fake_store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True))


def test_cancel_names_the_checkpoint_kept_or_says_there_is_none(fake_store: Store) -> None:
    with_checkpoint, without, done = make_sweep(
        fake_store, "sw", [JobState.TRAINING, JobState.BOOTING, JobState.TERMINATING]
    )
    fake_store.update_job(with_checkpoint.job_id, 1, latest_checkpoint="step-0000000193")

    kept = cancel_job(fake_store, with_checkpoint.job_id, "torn down")
    none = cancel_job(fake_store, without.job_id, "torn down")

    assert kept is not None and kept.state is JobState.CANCELLED
    assert kept.reason == "torn down; last checkpoint kept: step-0000000193"
    assert kept.stop_requested == "cancel"
    assert none is not None and none.reason == "torn down; no checkpoint was taken"
    assert cancel_job(fake_store, done.job_id, "torn down") is None  # its work is done
    assert cancel_job(fake_store, with_checkpoint.job_id, "again") is None


def test_a_segment_that_never_checkpoints_is_reported_lost(
    fake_store: Store, tmp_path: Path
) -> None:
    idle, stuck = make_sweep(fake_store, "sw", [JobState.TRAINING, JobState.TRAINING])
    for job in (idle, stuck):
        fake_store.start_first_attempt(job.job_id)
    fake_store.update_job(idle.job_id, 1, latest_checkpoint="step-0000000010")
    fake_store.update_attempt(idle.job_id, 1, segment=2, segment_status="done", pulled_segment=2)
    fake_store.update_attempt(stuck.job_id, 1, segment=1, segment_status="running")

    settings = Settings(home=tmp_path)
    stop = stop_training(fake_store, settings, StepReport(None), "torn down", timeout_s=0.2)

    assert stop.cancelled == {idle.job_id: "step-0000000010", stuck.job_id: ""}
    assert list(stop.lost) == [stuck.job_id]
    assert "the steps after its start are lost" in stop.lost[stuck.job_id]
    assert {j.state for j in fake_store.jobs([idle.job_id, stuck.job_id])} == {JobState.CANCELLED}


def test_a_pack_stops_with_every_members_checkpoint_kept(fake_store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    fleet = FakeFleet(fake_store, settings)
    pack_id, members = fleet.pack(members=2)
    fleet.launch(pack_id)
    folders = {m: write_checkpoint(tmp_path / m, 24, 4096, m.encode(), "{}") for m in members}
    outcomes = {m: {"checkpoint": f"{m}/checkpoints/{folders[m].name}"} for m in members}
    fleet.training(pack_id, status="done")
    fake_store.update_attempt(pack_id, 1, member_outcomes=outcomes)
    uploads = [start_upload(fake_store, m, 1, folders[m]) for m in members]

    stop = stop_training(fake_store, settings, StepReport(None), "torn down", timeout_s=30)

    assert not any(upload.error for upload in uploads)
    assert stop.cancelled == dict.fromkeys(members, "step-0000000024")  # the members, not the pack
    assert stop.lost == {}
    assert fake_store.job(pack_id).state is JobState.CANCELLED
    for member in fake_store.jobs(members):
        assert member.state is JobState.CANCELLED
        assert member.reason == "torn down; last checkpoint kept: step-0000000024"
        assert verify_folder(
            open_store(settings),
            f"{checkpoints_prefix(member.sweep_id, member.job_id)}/step-0000000024",
        )


def test_a_packs_members_are_cancelled_each_naming_its_own_checkpoint(
    fake_store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(fake_store, Settings(home=tmp_path))
    pack_id, members = fleet.pack(members=2)
    fleet.launch(pack_id, JobState.BOOTSTRAPPING)
    own = {members[0]: "step-0000000016", members[1]: "step-0000000008"}
    for job_id, name in {**own, pack_id: "step-0000000016"}.items():
        fake_store.update_job(job_id, 1, latest_checkpoint=name)

    stop_provisioning(fake_store, Fleet(), StepReport(None))

    assert fake_store.job(pack_id).state is JobState.CANCELLED
    for member in fake_store.jobs(members):
        assert member.state is JobState.CANCELLED
        assert member.reason == f"{TEARDOWN_REASON}; last checkpoint kept: {own[member.job_id]}"
