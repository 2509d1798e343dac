"""The file store (`file:///…`, the default `SAEFLEET_HOME/artifacts`): keys are files under a
local folder.

Instances of the local provider share this machine's disk, so they move checkpoints through the
same plans as with S3: an upload's parts are written at their offsets into a staging file under
`.uploads/` (its `file://` URL stands for the presigned part URL, and expires the same way), which
completing the upload renames into place; a download's URL is the object's `file://` URL. Hidden
names (`.uploads`, `.x.part`) never show in a listing.
"""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from jobs.objectstore import ObjectEntry, StoreConfigError, StoreError, local_matches
from jobs.upload_plans import UPLOAD_URL_EXPIRY_S, CompletedPart, UploadPlan, unsigned_parts
from sae.atomic_files import write_atomic

UPLOADS_DIR = ".uploads"
"""Staging files of uploads in progress, under the store's root."""


class FileStore:
    """Keys are files under a local folder (the default: SAEFLEET_HOME/artifacts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(f"store {self.url}: cannot create {self.root}: {exc}") from None

    def location(self, key: str) -> str:
        return str(self.root / key)

    def local_dir(self, prefix: str) -> Path:
        return self.root / prefix

    def put_file(self, key: str, path: Path, entry: ObjectEntry) -> None:
        target = self.root / key
        if target.exists() and target.samefile(path):
            return  # pulled into place already
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, temp)
        temp.replace(target)

    def put_bytes(self, key: str, data: bytes) -> None:
        write_atomic(self.root / key, data)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def list_names(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def matches(self, key: str, entry: ObjectEntry) -> bool:
        return local_matches(self.root / key, entry)

    def download(self, prefix: str, names: list[str], dest: Path) -> None:
        if dest == self.root / prefix:
            return
        for name in names:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / prefix / name, dest / name)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    # ---- transfers by instances (jobs.upload_plans) -------------------------------------------

    def _staging(self, upload_id: str) -> Path:
        return self.root / UPLOADS_DIR / upload_id

    def presign_upload(
        self, key: str, entry: ObjectEntry, expires_s: int = UPLOAD_URL_EXPIRY_S
    ) -> UploadPlan:
        """Start an upload of `entry` under `key`: an empty staging file its parts go into."""
        upload_id = secrets.token_hex(12)
        staging = self._staging(upload_id)
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.touch()
        return self.reissue(UploadPlan(key=key, upload_id=upload_id, parts=unsigned_parts(entry)))

    def reissue(self, plan: UploadPlan, expires_s: int = UPLOAD_URL_EXPIRY_S) -> UploadPlan:
        url = self._staging(plan.upload_id).as_uri()
        expires_at = time.time() + expires_s
        parts = [p.model_copy(update={"url": url, "expires_at": expires_at}) for p in plan.parts]
        return plan.model_copy(update={"parts": parts})

    def complete_upload(self, plan: UploadPlan, done: list[CompletedPart]) -> None:
        staging = self._staging(plan.upload_id)
        if sorted(p.number for p in done) != [p.number for p in plan.parts]:
            raise StoreError(f"upload of {plan.key}: parts missing")
        if not staging.is_file():
            raise StoreError(f"upload of {plan.key}: its staging file is gone")
        target = self.root / plan.key
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(target)

    def abort_upload(self, plan: UploadPlan) -> None:
        self._staging(plan.upload_id).unlink(missing_ok=True)

    def presign_download(self, key: str, expires_s: int = UPLOAD_URL_EXPIRY_S) -> str:
        return (self.root / key).as_uri()
