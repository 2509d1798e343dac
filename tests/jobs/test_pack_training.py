"""The GPU side of a pack with the trainer stood in for: a resumed pack's members each download
their own checkpoint from the store before the pack's run is built, and each member's checkpoint
of a segment goes to the store in the background on the member's own upload board."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import jobs.pack_training
import jobs.training_task
from jobs.checkpoint_restore import restore_plan
from jobs.checkpoint_upload import UPLOAD_ENV
from jobs.checkpoints import pulled_checkpoint_dir, store_pulled_checkpoint
from jobs.pack_training import MemberWatch, pack_run
from jobs.remote import RemoteLayout
from jobs.training_task import train_segment
from jobs.upload_board import UploadBoard
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld


class StandIn:
    """Records how the pack's run was built."""

    def __init__(
        self, configs: list[Any], run_dirs: list[Path], nan_at: dict, inject_oom: Any
    ) -> None:
        self.run_dirs = run_dirs


def test_each_member_downloads_its_own_checkpoint_before_the_run_is_built(
    stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sae.pack.PackRun", StandIn)
    monkeypatch.setattr(jobs.pack_training, "_packs", {})
    pack_id, members = stage_world.pack(members=2)
    layout = RemoteLayout(str(tmp_path / "instance"))
    root = pulled_checkpoint_dir(stage_world.settings, "sw1", members[0], "any").parent
    name = write_checkpoint(root, 8, 4096, b"state", "{}").name
    assert store_pulled_checkpoint(stage_world.settings, "sw1", members[0], name)
    plan = restore_plan(stage_world.settings, "sw1", members[0])
    assert plan is not None
    Path(layout.workdir).mkdir()
    Path(layout.member_restore_plan(members[0])).write_text(plan.model_dump_json())

    run = pack_run(stage_world.store, pack_id, 1, members, Path(layout.workdir))

    restored = Path(layout.member_checkpoints_dir(members[0])) / name
    assert (restored / "state.pt").read_bytes() == b"state"
    assert not Path(layout.member_restore_plan(members[0])).exists()
    assert not Path(layout.member_checkpoints_dir(members[1])).exists()
    assert run.run_dirs == [Path(layout.run_dir) / m for m in members]  # type: ignore[attr-defined]


def test_each_members_checkpoint_is_uploaded_on_its_own_board(
    stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack_id, members = stage_world.pack(members=2)
    instance = stage_world.launch(pack_id, JobState.TRAINING)
    workdir = tmp_path / "instance"
    workdir.mkdir()
    (workdir / "job.json").write_text(json.dumps(stage_world.job(pack_id).spec["config"]))
    monkeypatch.setenv("SAEFLEET_WORKDIR", str(workdir))
    monkeypatch.setenv(UPLOAD_ENV, "1")
    outcomes = {
        members[0]: {"checkpoint": f"{members[0]}/checkpoints/step-0000000008", "done": False},
        members[1]: {"checkpoint": "", "done": False, "error": "TrainingDiverged"},
    }
    monkeypatch.setattr(
        jobs.training_task,
        "train_pack_segment",
        lambda *_: {"segment_done": False, "member_outcomes": outcomes},
    )
    queued: list[tuple[str, int, Path, Path]] = []

    def record(board: UploadBoard, segment: int, checkpoint: Path, outbox: Path) -> None:
        queued.append((board.key, segment, checkpoint, outbox))

    monkeypatch.setattr(jobs.training_task, "upload_in_background", record)
    stage_world.store.claim_segment(pack_id, 1, 1)
    kwargs = {"job_id": pack_id, "attempt": 1, "segment": 1, "instance_id": instance.instance_id}

    assert train_segment.apply(kwargs=kwargs).state == "SUCCESS"

    outbox = Path(RemoteLayout(str(workdir)).upload_outbox)
    assert queued == [
        (
            UploadBoard(stage_world.store.r, members[0], 1).key,
            1,
            workdir / "run" / members[0] / "checkpoints" / "step-0000000008",
            outbox / members[0],
        )
    ]  # the member that failed wrote none
    assert stage_world.attempt(pack_id).member_outcomes == outcomes


def test_the_segment_ends_when_a_member_is_asked_to_stop_or_leaves(
    stage_world: StageWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs.pack_training, "MEMBER_CHECK_INTERVAL_S", 0.0)
    pack_id, (capped, cancelled, plain) = stage_world.pack()
    stage_world.launch(pack_id, JobState.TRAINING)
    watch = MemberWatch(stage_world.store, pack_id, 1, [capped, cancelled, plain])
    assert not watch.changed()

    stage_world.store.update_job(capped, 1, stop_requested="cost_cap")  # its own cost cap
    assert watch.changed()

    watch = MemberWatch(stage_world.store, pack_id, 1, [cancelled, plain])
    stage_world.store.transition(cancelled, 1, JobState.CANCELLED, reason="by hand")
    assert watch.changed()
