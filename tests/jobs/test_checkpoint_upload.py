"""Checkpoints uploaded by the instance itself (jobs.checkpoint_upload on the instance's side,
jobs.upload_grants on the control plane's), with the real uploader in a thread: supervise sends
the next segment without waiting for the upload, a checkpoint counts only once it verifies in the
store, a corrupt part or an upload cut short never counts (the previous checkpoint stays the
job's latest), expired URLs are re-issued through the board, and a resumed attempt downloads its
checkpoint from the store (presigned GETs from moto's S3 server, `file://` for the file store)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs.checkpoint_restore import restore_checkpoint, restore_plan
from jobs.checkpoint_upload import CheckpointUpload
from jobs.objectstore import StoreError, checkpoints_prefix, open_store, verify_folder
from jobs.stages import supervise_training
from jobs.upload_board import Outcome, UploadBoard, UploadGrant
from jobs.upload_grants import serve_uploads
from queue_app.logs import redact
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from sae.checkpoint import verify_checkpoint, write_checkpoint
from tests.jobs.stage_world import StageWorld
from tests.support.instance_uploads import InstanceUpload, serve_until, start_upload
from tests.support.moto_s3 import fresh_bucket


@pytest.fixture(params=["file", "s3"])
def store_settings(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The test's settings with the file store, or the store in a fresh moto bucket."""
    if request.param == "file":
        return settings
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = fresh_bucket(endpoint, monkeypatch, "sf-upload")
    monkeypatch.setenv("SAEFLEET_STORE_URL", f"s3://{bucket}/fleet")
    monkeypatch.setenv("SAEFLEET_STORE_ENDPOINT_URL", endpoint)
    return Settings()


def written(world: StageWorld, job_id: str, segment: int, root: Path, done: bool = False) -> Path:
    """The instance trained `segment` and wrote its checkpoint under `root`."""
    local = write_checkpoint(root, segment * 4, segment, b"state%d" % segment * 1000, "{}")
    world.store.claim_segment(job_id, 1, segment)  # sent (unless supervise sent it)
    assert world.store.start_segment(job_id, 1, segment, runner="test")
    world.store.finish_segment(
        job_id,
        1,
        segment,
        "done",
        segment_checkpoint=f"checkpoints/{local.name}",
        segment_done=done,
    )
    return local


def test_the_next_segment_trains_while_the_checkpoint_uploads(
    stage_world: StageWorld, store_settings: Settings, tmp_path: Path
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, JobState.TRAINING)
    stage_world.deliver(supervise_training, job_id)
    first = written(stage_world, job_id, 1, tmp_path)

    assert stage_world.deliver(supervise_training, job_id).state == "RETRY"
    assert [m["kwargs"]["segment"] for m in stage_world.sent] == [1, 2]  # no wait for the upload
    assert stage_world.job(job_id).latest_checkpoint is None

    upload = start_upload(stage_world.store, job_id, 1, first)
    serve_until(
        lambda: stage_world.deliver(supervise_training, job_id),
        lambda: stage_world.job(job_id).latest_checkpoint == first.name,
        upload,
    )
    assert upload.error == [] and stage_world.job(job_id).latest_checkpoint == first.name
    assert stage_world.attempt(job_id).pulled_segment == 1
    prefix = f"{checkpoints_prefix('sw1', job_id)}/{first.name}"
    assert verify_folder(open_store(store_settings), prefix)

    last = written(stage_world, job_id, 2, tmp_path, done=True)
    assert stage_world.deliver(supervise_training, job_id).state == "RETRY"  # waits for the last
    deliveries = []
    serve_until(
        lambda: deliveries.append(stage_world.deliver(supervise_training, job_id)),
        lambda: bool(deliveries) and deliveries[-1] == stage_world.passed_on(job_id),
        start_upload(stage_world.store, job_id, 2, last),
    )
    assert deliveries[-1] == stage_world.passed_on(job_id)
    assert stage_world.job(job_id).latest_checkpoint == last.name
    assert len(stage_world.sent) == 2


class CorruptingBoard(UploadBoard):
    """The checkpoint's state file changes after the instance hashed it (a corrupt part)."""

    def __init__(self, board: UploadBoard, victim: Path) -> None:
        super().__init__(board.r, "", 0)
        self.key, self.victim = board.key, victim

    def grant(self, segment: int) -> UploadGrant | None:
        found = super().grant(segment)
        if found is not None:
            data = bytearray(self.victim.read_bytes())
            data[0] ^= 0xFF
            self.victim.write_bytes(bytes(data))
        return found


class ExpiringBoard(UploadBoard):
    """The first grant's URLs arrive expired (moto accepts expired URLs: we must notice)."""

    def __init__(self, board: UploadBoard) -> None:
        super().__init__(board.r, "", 0)
        self.key = board.key

    def grant(self, segment: int) -> UploadGrant | None:
        found = super().grant(segment)
        if found is None or found.answers_reissue:
            return found
        plans = [
            p.model_copy(
                update={"parts": [q.model_copy(update={"expires_at": 0}) for q in p.parts]}
            )
            for p in found.plans
        ]
        return found.model_copy(update={"plans": plans})


def board_upload(
    world: StageWorld,
    settings: Settings,
    job_id: str,
    board: UploadBoard,
    segment: int,
    folder: Path,
) -> None:
    """Run the instance's upload with `board` until it is settled, serving it meanwhile."""
    job = world.job(job_id)
    upload = InstanceUpload(CheckpointUpload(board, segment, folder.name, folder)).start()
    serve_until(
        lambda: serve_uploads(world.store, settings, job, 1),
        lambda: board.outcome(segment) is not None,
        upload,
    )


def test_a_corrupt_part_or_a_cut_upload_never_counts_and_expired_urls_are_reissued(
    stage_world: StageWorld, store_settings: Settings, tmp_path: Path
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, JobState.TRAINING)
    board = UploadBoard(stage_world.store.r, job_id, 1)
    good = written(stage_world, job_id, 1, tmp_path)
    board_upload(stage_world, store_settings, job_id, ExpiringBoard(board), 1, good)
    assert board.outcome(1) is Outcome.KEPT
    assert board.entries()[1].reissue == 1  # the expired URLs were re-issued once
    assert stage_world.job(job_id).latest_checkpoint == good.name

    corrupt = written(stage_world, job_id, 2, tmp_path)
    board_upload(
        stage_world,
        store_settings,
        job_id,
        CorruptingBoard(board, corrupt / "state.pt"),
        2,
        corrupt,
    )
    assert board.outcome(2) is Outcome.REJECTED
    assert stage_world.job(job_id).latest_checkpoint == good.name

    cut = written(stage_world, job_id, 3, tmp_path)  # preempted after its grant: no report
    board.request(3, board.entries()[1].request.model_copy(update={"name": cut.name}))  # type: ignore[union-attr]
    job = stage_world.job(job_id)
    serve_uploads(stage_world.store, store_settings, job, 1)
    serve_uploads(stage_world.store, store_settings, job, 1)
    assert board.grant(3) is not None and board.outcome(3) is None
    parent = checkpoints_prefix("sw1", job_id)
    assert not verify_folder(open_store(store_settings), f"{parent}/{cut.name}")
    assert stage_world.job(job_id).latest_checkpoint == good.name
    assert stage_world.attempt(job_id).pulled_segment == 1


def test_a_resumed_attempt_downloads_its_checkpoint_from_the_store(
    stage_world: StageWorld, store_settings: Settings, tmp_path: Path
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, JobState.TRAINING)
    folder = written(stage_world, job_id, 1, tmp_path / "first")
    board_upload(
        stage_world, store_settings, job_id, UploadBoard(stage_world.store.r, job_id, 1), 1, folder
    )

    plan = restore_plan(store_settings, "sw1", job_id)
    assert plan is not None and plan.name == folder.name
    plan_file = tmp_path / "restore.json"
    plan_file.write_text(plan.model_dump_json())
    restored = restore_checkpoint(plan_file, tmp_path / "resumed" / "checkpoints")
    assert restored is not None and verify_checkpoint(restored)
    assert (restored / "state.pt").read_bytes() == (folder / "state.pt").read_bytes()
    assert not plan_file.exists()

    bad = plan.model_copy(update={"name": "step-0000000099"})
    bad.objects[0] = bad.objects[0].model_copy(update={"sha256": "0" * 64})
    plan_file.write_text(bad.model_dump_json())
    with pytest.raises(StoreError, match="does not match"):
        restore_checkpoint(plan_file, tmp_path / "resumed" / "checkpoints")
    assert not (tmp_path / "resumed" / "checkpoints" / "step-0000000099").exists()


def test_a_presigned_url_loses_its_signature_and_credential_in_logs(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = fresh_bucket(moto_endpoint, monkeypatch, "sf-redact")
    settings = Settings(
        home=tmp_path, store_url=f"s3://{bucket}/fleet", store_endpoint_url=moto_endpoint
    )
    url = open_store(settings).presign_download("sw1/job/checkpoints/step-1/state.pt")
    line = redact(f'HTTP Request: GET {url} "HTTP/1.1 200 OK"')
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    credential = parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]
    assert signature not in line and credential.split("/")[0] not in line
    assert "X-Amz-Signature=***" in line and line.endswith('"HTTP/1.1 200 OK"')
