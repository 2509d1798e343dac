"""The stages with an S3 store (moto's server, its own process): the checkpoints the instance
uploads count once verified in the bucket, resume fetches the newest that verifies (a corrupted
newest one falls back), collect publishes `final/` and the worker log, and the readers
(`saefleet logs`, reports) find them there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest

from jobs.checkpoints import newest_stored_checkpoint
from jobs.objectstore import checkpoints_prefix, final_prefix, open_store, verify_folder
from jobs.remote import layout_for
from jobs.stages import collect, supervise_training
from ops.job_logs import worker_logs
from ops.report import job_history
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld
from tests.support.instance_uploads import serve_until, start_upload
from tests.support.moto_s3 import fresh_bucket


@pytest.fixture
def settings(settings: Settings, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's settings with the store in a fresh moto bucket."""
    bucket = fresh_bucket(moto_endpoint, monkeypatch, "sf-stages")
    monkeypatch.setenv("SAEFLEET_STORE_URL", f"s3://{bucket}/fleet")
    monkeypatch.setenv("SAEFLEET_STORE_ENDPOINT_URL", moto_endpoint)
    return Settings()


def finish_segment(world: StageWorld, job_id: str, segment: int, tmp_path: Path) -> str:
    """The instance trained `segment`, wrote its checkpoint and uploaded it while supervise
    served the upload."""
    local = write_checkpoint(tmp_path / "written", segment * 4, segment, b"state%d" % segment, "{}")
    assert world.store.start_segment(job_id, 1, segment, runner="test")
    world.store.finish_segment(
        job_id, 1, segment, "done", segment_checkpoint=f"checkpoints/{local.name}"
    )
    serve_until(
        lambda: world.deliver(supervise_training, job_id),
        lambda: world.job(job_id).latest_checkpoint == local.name,
        start_upload(world.store, job_id, segment, local),
    )
    return local.name


def test_uploaded_checkpoints_count_in_the_bucket_and_resume_falls_back_past_corruption(
    stage_world: StageWorld, settings: Settings, tmp_path: Path
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, JobState.TRAINING)
    stage_world.deliver(supervise_training, job_id)
    names = []
    for segment in (1, 2):
        names.append(finish_segment(stage_world, job_id, segment, tmp_path))
        assert stage_world.job(job_id).latest_checkpoint == names[-1]
    store = open_store(settings)
    parent = checkpoints_prefix("sw1", job_id)
    assert store.list_names(parent) == names
    assert all(verify_folder(store, f"{parent}/{name}") for name in names)

    shutil.rmtree(settings.home / "store-cache", ignore_errors=True)  # as on a second host
    resumed = newest_stored_checkpoint(settings, "sw1", job_id)
    assert resumed is not None and resumed.name == names[1]
    assert (resumed / "state.pt").read_bytes() == b"state2"

    bucket, prefix = store.url.removeprefix("s3://").split("/", 1)
    boto3.client("s3", endpoint_url=settings.store_endpoint_url).put_object(
        Bucket=bucket, Key=f"{prefix}/{parent}/{names[1]}/state.pt", Body=b"statX"
    )
    resumed = newest_stored_checkpoint(settings, "sw1", job_id)
    assert resumed is not None and resumed.name == names[0]


def test_collect_publishes_final_and_the_worker_log_where_readers_find_them(
    stage_world: StageWorld, settings: Settings
) -> None:
    job_id = stage_world.sweep()
    instance = stage_world.launch(job_id, JobState.TRAINING)
    layout = layout_for(instance)
    files = stage_world.ssh.files[instance.instance_id]
    metrics = {"evals": {"fvu": 0.2, "l0": 8.0}, "history": [{"step": 1, "loss": 0.5}]}
    files[f"{layout.final_dir}/metrics.json"] = json.dumps(metrics).encode()
    files[f"{layout.final_dir}/sae.safetensors"] = b"weights"
    files[layout.worker_log] = b"worker says hi\n"
    stage_world.deliver(collect, job_id)

    job = stage_world.job(job_id)
    store = open_store(settings)
    assert job.artifacts_dir == store.location(f"sw1/{job_id}")
    assert job.artifacts_dir.startswith("s3://")
    assert verify_folder(store, final_prefix("sw1", job_id))
    assert job_history(job) == metrics["history"]
    [log] = worker_logs(stage_world.store, settings, job)
    log.instance = log.instance.model_copy(update={"host": None})  # the instance is gone
    assert log.tail(5) == ["worker says hi"]
