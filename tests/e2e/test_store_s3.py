"""A whole one-job sweep with the store in S3 (moto's server, its own process): every checkpoint,
the final SAE, the worker log and summary.json end up in the bucket, verified there, and nothing
in SAEFLEET_HOME/artifacts; `saefleet sweep wait` prints the summary read from the bucket."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from jobs.objectstore import (
    checkpoints_prefix,
    final_prefix,
    newest_verified,
    open_store,
    summary_key,
    verify_folder,
    worker_log_key,
)
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from tests.e2e.harness import ControlPlane, submit_one_job
from tests.support.moto_s3 import TEST_CREDENTIALS, moto_s3_server

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_plane(plane: ControlPlane, tmp_path: Path) -> Iterator[ControlPlane]:
    """The test's control plane with SAEFLEET_STORE_URL in a fresh moto bucket."""
    with moto_s3_server(tmp_path / "moto.log") as endpoint:
        bucket = f"sf-e2e-{secrets.token_hex(4)}"
        client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
        client.create_bucket(Bucket=bucket)
        plane.env.update(TEST_CREDENTIALS)
        plane.env["SAEFLEET_STORE_URL"] = f"s3://{bucket}/fleet"
        plane.env["SAEFLEET_STORE_ENDPOINT_URL"] = endpoint
        yield plane


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def test_a_sweep_keeps_everything_in_the_bucket(
    s3_plane: ControlPlane,
    fleet_assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_plane.start_control()
    s3_plane.start_tunnels()
    sweep_id, job_id = submit_one_job(
        s3_plane, tmp_path, fleet_assets, segment_minutes=0.02, **{"train.total_tokens": 4096}
    )
    sweep = s3_plane.wait_sweep(sweep_id, timeout_s=300)
    assert sweep.finalize_runs == 1
    [job] = s3_plane.store.sweep_jobs(sweep_id)
    assert job.state is JobState.SUCCEEDED, job.reason

    for name in ("SAEFLEET_STORE_URL", "SAEFLEET_STORE_ENDPOINT_URL", *TEST_CREDENTIALS):
        monkeypatch.setenv(name, s3_plane.env[name])
    store = open_store(Settings(home=s3_plane.home))
    assert sweep.summary_path == store.location(summary_key(sweep_id))
    summary = json.loads(store.get_bytes(summary_key(sweep_id)) or b"{}")
    assert summary["states"] == {"SUCCEEDED": 1}
    assert job.artifacts_dir and job.artifacts_dir.startswith("s3://")
    assert verify_folder(store, final_prefix(sweep_id, job_id))
    assert newest_verified(store, checkpoints_prefix(sweep_id, job_id)) == job.latest_checkpoint
    assert b"ready" in (store.get_bytes(worker_log_key(sweep_id, job_id, 1)) or b"")
    assert not (s3_plane.home / "artifacts").exists()

    waited = s3_plane.run("sweep", "wait", sweep_id)
    assert waited.returncode == 0, waited.stderr
    assert f"artifacts: {store.location(sweep_id)}" in waited.stdout
    assert s3_plane.running_instances() == []
