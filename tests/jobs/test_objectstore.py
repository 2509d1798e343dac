"""The file store (the default, SAEFLEET_HOME/artifacts) and the store URL's validation: folders
count once their manifest verifies (stat + checksum), a corrupt newest one falls back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.objectstore import (
    MIN_PART_SIZE,
    STORE_MANIFEST,
    StoreConfigError,
    StoreError,
    composite_sha256,
    describe_file,
    fetch_folder,
    newest_verified,
    open_store,
    publish_folder,
    verify_folder,
)
from jobs.objectstore_file import FileStore
from jobs.presigned_upload import upload_file
from queue_app.settings import Settings

PARENT = "sw1/job1/checkpoints"


def folder_with(root: Path, name: str, content: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(content)
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")
    return folder


def test_the_default_store_is_the_artifacts_folder_under_home(tmp_path: Path) -> None:
    store = open_store(Settings(home=tmp_path))
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "artifacts"
    assert store.local_dir("sw1/job1") == Settings(home=tmp_path).job_dir("sw1", "job1")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("gs://bucket/x", "unknown scheme 'gs'"),
        ("file://otherhost/x", "a file URL names no host"),
        ("s3:///prefix", "no bucket"),
    ],
)
def test_bad_store_urls_are_config_errors_naming_the_problem(
    tmp_path: Path, url: str, complaint: str
) -> None:
    with pytest.raises(StoreConfigError, match=complaint):
        open_store(Settings(home=tmp_path, store_url=url))


def test_a_published_folder_verifies_and_fetches_in_place(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    folder = folder_with(tmp_path, "step-0000000001", b"abc")
    publish_folder(store, f"{PARENT}/step-0000000001", folder)
    assert (store.root / PARENT / "step-0000000001" / STORE_MANIFEST).is_file()
    assert newest_verified(store, PARENT) == "step-0000000001"
    local = fetch_folder(store, f"{PARENT}/step-0000000001")
    assert (local / "sub" / "config.json").read_text() == "{}"


def test_pulled_into_place_then_published_copies_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    in_place = folder_with(store.root / PARENT, "step-0000000001", b"abc")
    publish_folder(store, f"{PARENT}/step-0000000001", in_place)
    assert verify_folder(store, f"{PARENT}/step-0000000001")


def test_no_manifest_or_a_corrupt_object_does_not_count(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    publish_folder(store, f"{PARENT}/step-0000000001", folder_with(tmp_path, "a", b"one"))
    publish_folder(store, f"{PARENT}/step-0000000002", folder_with(tmp_path, "b", b"two"))
    folder_with(store.root / PARENT, "step-0000000003", b"three")  # interrupted: no manifest
    assert newest_verified(store, PARENT) == "step-0000000002"
    (store.root / PARENT / "step-0000000002" / "state.pt").write_bytes(b"twO")  # same size
    assert newest_verified(store, PARENT) == "step-0000000001"


def test_part_checksums_make_the_s3_composite(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    entry = describe_file(path, "f", part_size=4)
    assert entry.size == 10 and len(entry.part_sha256) == 3
    assert composite_sha256(entry.part_sha256) != composite_sha256(entry.part_sha256[:2])


def test_the_file_store_takes_uploads_through_file_urls_part_by_part(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    source = tmp_path / "state.pt"
    source.write_bytes(os.urandom(3 * MIN_PART_SIZE // 2))
    entry = describe_file(source, "state.pt", part_size=MIN_PART_SIZE)
    plan = store.presign_upload("sw/job/checkpoints/step-1/state.pt", entry)
    assert [p.url.startswith("file://") for p in plan.parts] == [True, True]
    done = upload_file(source, plan, store.reissue)
    with pytest.raises(StoreError, match="parts missing"):
        store.complete_upload(plan, done[:1])
    assert store.list_names("sw/job/checkpoints") == []  # nothing shows before completion
    store.complete_upload(plan, done)
    assert store.matches("sw/job/checkpoints/step-1/state.pt", entry)
