"""The S3 store against moto's S3 server (its own process, loopback) through boto3: presigned
multipart uploads from the instance's side, manifest verification from HeadObject, a corrupt
part, an interrupted upload, an expired URL, a missing bucket.

moto accepts an expired presigned URL and a part whose body does not match its checksum header,
so expiry is injected through the uploader's clock and corruption is caught by our manifest
check (moto stores the composite checksum of what it received, as S3 does)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobs.objectstore import (
    MIN_PART_SIZE,
    StoreConfigError,
    StoreError,
    describe_folder,
    fetch_folder,
    finish_uploaded_folder,
    newest_verified,
    open_store,
    publish_folder,
    verify_folder,
)
from jobs.objectstore_s3 import S3Store
from jobs.presigned_upload import upload_file
from jobs.upload_plans import CompletedPart, UploadPlan
from queue_app.settings import Settings
from tests.support.moto_s3 import ENFORCE_AUTH, TEST_CREDENTIALS, fresh_bucket, moto_s3_server

PARENT = "sw1/job1/checkpoints"


@pytest.fixture
def s3(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """A fresh bucket in moto, opened the way SAEFLEET_STORE_URL opens it."""
    bucket = fresh_bucket(moto_endpoint, monkeypatch, "sf-test")
    settings = Settings(
        home=tmp_path / "home", store_url=f"s3://{bucket}/fleet", store_endpoint_url=moto_endpoint
    )
    store = open_store(settings)
    assert isinstance(store, S3Store)
    store.check()
    return store


def checkpoint(root: Path, name: str, state_bytes: int = 1000) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(os.urandom(state_bytes))
    (folder / "config.json").write_text('{"k": 32}')
    return folder


def instance_upload(
    store: S3Store, prefix: str, folder: Path, part_size: int = MIN_PART_SIZE
) -> tuple[object, list[tuple[UploadPlan, list[CompletedPart]]]]:
    """What an instance does: describe its folder, get presigned plans, PUT every part."""
    manifest = describe_folder(folder, part_size)
    uploads = []
    for entry in manifest.objects:
        plan = store.presign_upload(f"{prefix}/{entry.name}", entry)
        uploads.append((plan, upload_file(folder / entry.name, plan, store.reissue)))
    return manifest, uploads


def test_presigned_multipart_upload_counts_once_its_manifest_verifies(
    s3: S3Store, tmp_path: Path
) -> None:
    folder = checkpoint(tmp_path, "step-0000000100", state_bytes=2 * MIN_PART_SIZE + 123)
    manifest, uploads = instance_upload(s3, f"{PARENT}/step-0000000100", folder)
    assert [len(plan.parts) for plan, _ in uploads] == [1, 3]  # config.json, state.pt
    assert all("X-Amz-Signature" in p.url for plan, _ in uploads for p in plan.parts)
    assert newest_verified(s3, PARENT) is None  # uploaded, no manifest yet: does not count
    assert finish_uploaded_folder(s3, f"{PARENT}/step-0000000100", manifest, uploads)  # type: ignore[arg-type]
    assert newest_verified(s3, PARENT) == "step-0000000100"
    local = fetch_folder(s3, f"{PARENT}/step-0000000100")
    assert (local / "state.pt").read_bytes() == (folder / "state.pt").read_bytes()


def test_a_corrupt_part_does_not_count_and_the_previous_checkpoint_is_used(
    s3: S3Store, tmp_path: Path
) -> None:
    good = checkpoint(tmp_path, "step-0000000100")
    publish_folder(s3, f"{PARENT}/step-0000000100", good)
    bad = checkpoint(tmp_path, "step-0000000200", state_bytes=MIN_PART_SIZE + 10)
    manifest = describe_folder(bad, MIN_PART_SIZE)
    with (bad / "state.pt").open("r+b") as handle:  # a bit flips after the manifest was made
        handle.seek(MIN_PART_SIZE + 3)
        handle.write(b"\xff")
    uploads = []
    for entry in manifest.objects:
        plan = s3.presign_upload(f"{PARENT}/step-0000000200/{entry.name}", entry)
        uploads.append((plan, upload_file(bad / entry.name, plan, s3.reissue)))
    assert not finish_uploaded_folder(s3, f"{PARENT}/step-0000000200", manifest, uploads)
    assert newest_verified(s3, PARENT) == "step-0000000100"


def test_a_size_mismatch_does_not_verify(s3: S3Store, tmp_path: Path) -> None:
    folder = checkpoint(tmp_path, "step-0000000100")
    publish_folder(s3, f"{PARENT}/step-0000000100", folder)
    (folder / "config.json").write_text('{"k": 64, "more": 1}')
    entry = describe_folder(folder).objects[0]
    s3.put_file(f"{PARENT}/step-0000000100/config.json", folder / "config.json", entry)
    assert not verify_folder(s3, f"{PARENT}/step-0000000100")  # the manifest says otherwise


def test_an_interrupted_upload_never_counts(s3: S3Store, tmp_path: Path) -> None:
    good = checkpoint(tmp_path, "step-0000000100")
    publish_folder(s3, f"{PARENT}/step-0000000100", good)
    partial = checkpoint(tmp_path, "step-0000000200", state_bytes=MIN_PART_SIZE + 10)
    manifest = describe_folder(partial, MIN_PART_SIZE)
    uploads = []
    for entry in manifest.objects:
        plan = s3.presign_upload(f"{PARENT}/step-0000000200/{entry.name}", entry)
        done = upload_file(partial / entry.name, plan, s3.reissue)
        uploads.append((plan, done[:1]))  # preempted after the first part of each file
    assert newest_verified(s3, PARENT) == "step-0000000100"
    # S3 completes an upload from the parts it is given: the object is short, the check sees it
    assert not finish_uploaded_folder(s3, f"{PARENT}/step-0000000200", manifest, uploads)
    assert newest_verified(s3, PARENT) == "step-0000000100"
    with pytest.raises(StoreError):  # and an upload nobody started cannot be completed
        s3.complete_upload(uploads[0][0].model_copy(update={"upload_id": "gone"}), uploads[0][1])


def test_expired_urls_are_reissued_before_use(s3: S3Store, tmp_path: Path) -> None:
    folder = checkpoint(tmp_path, "step-0000000100")
    entry = describe_folder(folder).objects[1]
    plan = s3.presign_upload(f"{PARENT}/step-0000000100/state.pt", entry, expires_s=60)
    reissued: list[UploadPlan] = []

    def reissue(old: UploadPlan) -> UploadPlan:
        new = s3.reissue(old)
        reissued.append(new)
        return new

    an_hour_later = time.time() + 3600  # moto would accept the expired URL: our clock decides
    done = upload_file(folder / "state.pt", plan, reissue, clock=lambda: an_hour_later)
    assert len(reissued) == 1 and reissued[0].parts[0].url != plan.parts[0].url
    assert reissued[0].parts[0].expires_at > an_hour_later
    s3.complete_upload(reissued[0], done)
    assert s3.matches(f"{PARENT}/step-0000000100/state.pt", entry)


def test_a_missing_bucket_is_a_config_error_naming_it(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        home=tmp_path, store_url="s3://no-such-bucket/x", store_endpoint_url=moto_endpoint
    )
    with pytest.raises(StoreConfigError, match="s3://no-such-bucket/x: bucket does not exist"):
        open_store(settings).check()


def test_a_bucket_that_denies_access_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)  # keys this server does not know: every call is denied
    with moto_s3_server(tmp_path / "moto.log", env=ENFORCE_AUTH) as endpoint:
        settings = Settings(home=tmp_path, store_url="s3://theirs/x", store_endpoint_url=endpoint)
        with pytest.raises(StoreConfigError, match="the bucket denies access"):
            open_store(settings).check()
