"""The artifact and checkpoint store behind `SAEFLEET_STORE_URL`: `file:///…` (the default,
`SAEFLEET_HOME/artifacts`) or `s3://bucket/prefix` on any S3-compatible service
(jobs.objectstore_s3). Everything that writes or reads a sweep's artifacts goes through here.

Layout under the store's root (the `*_key`/`*_prefix` functions build every key):

    <sweep>/summary.json
    <sweep>/<job>/checkpoints/<step-…>/…    one folder per checkpoint
    <sweep>/<job>/final/…                   final SAE, metrics, plots
    <sweep>/<job>/logs/worker-a<n>.log

A folder (a checkpoint, `final/`) counts only once its store manifest, `store-manifest.json`
(each object's size, SHA-256 and the SHA-256 of each upload part), is in the store, written last,
and every object it lists has that size and checksum in the store: the file store stats and
hashes the file, S3 compares HeadObject's stored checksum without downloading anything.

Every store also has a local folder per prefix (`local_dir`): the file store's own folder; for
S3 a cache under `SAEFLEET_HOME/store-cache` where pulls land before they are published.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from jobs.errors import JobsError
from queue_app.settings import Settings

if TYPE_CHECKING:
    from jobs.upload_plans import CompletedPart, UploadPlan

STORE_MANIFEST = "store-manifest.json"
PART_SIZE = 64 << 20
"""Upload part size: a 3.2 GB checkpoint in 50 parts; S3 allows 10,000 parts, so 640 GB."""
MIN_PART_SIZE = 5 << 20
"""S3's smallest part (all but the last)."""


class StoreError(JobsError):
    """The store cannot be used right now (retryable: a network or service error)."""

    retryable = True


class StoreConfigError(StoreError):
    """The store URL or its bucket is unusable (unknown scheme, missing or denied bucket)."""

    retryable = False


class ObjectEntry(BaseModel):
    """One object of a manifest: what the store must hold under `<prefix>/<name>`."""

    name: str
    size: int
    sha256: str
    """SHA-256 of the whole object, hex."""
    part_size: int
    part_sha256: list[str]
    """SHA-256 of each upload part, base64 (S3's composite checksum is built from these)."""


class StoreManifest(BaseModel):
    """A folder's objects, written last: the folder counts once this verifies."""

    objects: list[ObjectEntry]


class ObjectStore(Protocol):
    """A bucket-like store of keys (`/`-separated, relative to the store's root)."""

    url: str

    def check(self) -> None:
        """Raise StoreConfigError unless the store exists and answers."""

    def location(self, key: str) -> str:
        """Where `key` lives, for people (a path, or an s3:// URL)."""

    def local_dir(self, prefix: str) -> Path:
        """The local folder that mirrors `prefix` (file store: the folder itself)."""

    def put_file(self, key: str, path: Path, entry: ObjectEntry) -> None:
        """Store the file at `path` under `key` (its description is `entry`)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when there is none."""

    def list_names(self, prefix: str) -> list[str]:
        """The names directly under `prefix/` (objects and sub-folders), sorted."""

    def matches(self, key: str, entry: ObjectEntry) -> bool:
        """The stored object has the size and checksum of `entry` (nothing downloaded on S3)."""

    def download(self, prefix: str, names: list[str], dest: Path) -> None:
        """Copy `prefix/<name>` for each name into `dest`."""

    def delete_prefix(self, prefix: str) -> None: ...

    # Transfers by an instance, which holds no credentials (jobs.upload_plans).

    def presign_upload(self, key: str, entry: ObjectEntry) -> UploadPlan:
        """Start an upload of `entry` under `key`: a URL per part, expiring."""

    def reissue(self, plan: UploadPlan) -> UploadPlan:
        """The same upload with fresh URLs."""

    def complete_upload(self, plan: UploadPlan, done: list[CompletedPart]) -> None:
        """Assemble the uploaded parts into the object (StoreError when a part is missing)."""

    def abort_upload(self, plan: UploadPlan) -> None: ...

    def presign_download(self, key: str) -> str:
        """A URL an instance can GET `key` from, expiring."""


# ---- layout ---------------------------------------------------------------------------------


def job_prefix(sweep_id: str, job_id: str) -> str:
    return f"{sweep_id}/{job_id}"


def checkpoints_prefix(sweep_id: str, job_id: str) -> str:
    return f"{sweep_id}/{job_id}/checkpoints"


def final_prefix(sweep_id: str, job_id: str) -> str:
    return f"{sweep_id}/{job_id}/final"


def summary_key(sweep_id: str) -> str:
    return f"{sweep_id}/summary.json"


def worker_log_key(sweep_id: str, job_id: str, attempt: int) -> str:
    return f"{sweep_id}/{job_id}/logs/worker-a{attempt}.log"


# ---- describing files -----------------------------------------------------------------------


def describe_file(path: Path, name: str, part_size: int = PART_SIZE) -> ObjectEntry:
    """Size, SHA-256 and per-part SHA-256 of a file, read once."""
    whole = hashlib.sha256()
    parts = []
    with path.open("rb") as handle:
        while block := handle.read(part_size):
            whole.update(block)
            parts.append(b64(hashlib.sha256(block).digest()))
    size = path.stat().st_size
    if not parts:
        parts = [b64(hashlib.sha256(b"").digest())]
    return ObjectEntry(
        name=name, size=size, sha256=whole.hexdigest(), part_size=part_size, part_sha256=parts
    )


def part_sha256(path: Path, part_size: int) -> list[str]:
    """SHA-256 of each part of a file, base64: one hash pass, every byte covered."""
    with path.open("rb") as handle:
        parts = [
            b64(hashlib.sha256(block).digest())
            for block in iter(lambda: handle.read(part_size), b"")
        ]
    return parts or [b64(hashlib.sha256(b"").digest())]


def describe_folder(folder: Path, part_size: int = PART_SIZE) -> StoreManifest:
    """The manifest of every file under `folder` (names relative, `/`-separated)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STORE_MANIFEST)
    return StoreManifest(
        objects=[describe_file(p, p.relative_to(folder).as_posix(), part_size) for p in files]
    )


def composite_sha256(part_sha256: list[str]) -> str:
    """S3's composite checksum of a multipart object: SHA-256 of the parts' digests, base64."""
    joined = b"".join(base64.b64decode(p) for p in part_sha256)
    return b64(hashlib.sha256(joined).digest())


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# ---- folders that count once verified -----------------------------------------------------------


def publish_folder(store: ObjectStore, prefix: str, folder: Path) -> StoreManifest:
    """Upload every file of `folder` under `prefix`, then its manifest (last), and verify."""
    manifest = describe_folder(folder)
    for entry in manifest.objects:
        store.put_file(f"{prefix}/{entry.name}", folder / entry.name, entry)
    store.put_bytes(f"{prefix}/{STORE_MANIFEST}", manifest.model_dump_json(indent=1).encode())
    if not verify_folder(store, prefix):
        raise StoreError(f"{store.location(prefix)} does not verify right after its upload")
    return manifest


def finish_uploaded_folder(
    store: ObjectStore,
    prefix: str,
    manifest: StoreManifest,
    uploads: list[tuple[UploadPlan, list[CompletedPart]]],
) -> bool:
    """Complete an instance's uploads of a folder, write its manifest (last) and verify it:
    True when the folder counts. A part never uploaded fails the completion (StoreError)."""
    for plan, done in uploads:
        store.complete_upload(plan, done)
    store.put_bytes(f"{prefix}/{STORE_MANIFEST}", manifest.model_dump_json(indent=1).encode())
    return verify_folder(store, prefix)


def read_manifest(store: ObjectStore, prefix: str) -> StoreManifest | None:
    raw = store.get_bytes(f"{prefix}/{STORE_MANIFEST}")
    if raw is None:
        return None
    try:
        return StoreManifest.model_validate_json(raw)
    except ValueError:
        return None


def verify_folder(store: ObjectStore, prefix: str) -> bool:
    """The folder's manifest is in the store and every object it lists matches it."""
    manifest = read_manifest(store, prefix)
    return manifest is not None and all(
        store.matches(f"{prefix}/{e.name}", e) for e in manifest.objects
    )


def newest_verified(store: ObjectStore, parent: str) -> str | None:
    """The newest (last by name) folder under `parent` that verifies; a corrupt or partial
    newer one is skipped."""
    for name in reversed(store.list_names(parent)):
        if verify_folder(store, f"{parent}/{name}"):
            return name
    return None


def fetch_folder(store: ObjectStore, prefix: str) -> Path:
    """The verified folder `prefix` as a local folder (downloaded into the cache when the local
    copy differs from the manifest)."""
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise StoreError(f"{store.location(prefix)} has no manifest")
    local = store.local_dir(prefix)
    stale = [e.name for e in manifest.objects if not local_matches(local / e.name, e)]
    if stale:
        store.download(prefix, stale, local)
        if not all(local_matches(local / e.name, e) for e in manifest.objects):
            raise StoreError(f"{store.location(prefix)} downloaded but does not verify")
    return local


def local_matches(path: Path, entry: ObjectEntry) -> bool:
    return (
        path.is_file()
        and path.stat().st_size == entry.size
        and part_sha256(path, entry.part_size) == entry.part_sha256
    )


# ---- opening the configured store -------------------------------------------------------------


def open_store(settings: Settings) -> ObjectStore:
    """The store `SAEFLEET_STORE_URL` names (default: the file store under SAEFLEET_HOME); one
    per process and URL (an S3 client is built once)."""
    url = settings.store_url or (settings.home / "artifacts").absolute().as_uri()
    return _open_store(url, settings.store_endpoint_url, settings.home)


@lru_cache(maxsize=16)
def _open_store(url: str, endpoint_url: str | None, home: Path) -> ObjectStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(f"SAEFLEET_STORE_URL {url!r}: a file URL names no host")
        from jobs.objectstore_file import FileStore

        return FileStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        from jobs.objectstore_s3 import S3Store

        if not parts.netloc:
            raise StoreConfigError(f"SAEFLEET_STORE_URL {url!r}: no bucket after s3://")
        return S3Store(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=endpoint_url,
            cache_root=home / "store-cache",
        )
    raise StoreConfigError(
        f"SAEFLEET_STORE_URL {url!r}: unknown scheme {parts.scheme!r} (use file:// or s3://)"
    )
