"""A resumed attempt's checkpoint, downloaded by the instance straight from the store.

Bootstrap writes a restore plan into the instance's workdir (a 0600 file): the newest checkpoint
that verifies in the store, with a URL per object that expires within hours (a presigned GET, or
the file store's `file://` URL for the local provider) and each object's size and SHA-256. The
first segment on the instance downloads it into the run's checkpoints folder (each object
checked, then the folder renamed into place) before the trainer looks for a checkpoint, and
deletes the plan.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from jobs.objectstore import (
    StoreError,
    checkpoints_prefix,
    newest_verified,
    open_store,
    read_manifest,
)
from jobs.upload_plans import DownloadObject, RestorePlan
from queue_app.settings import Settings

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 600.0
BLOCK = 8 << 20


def restore_plan(settings: Settings, sweep_id: str, job_id: str) -> RestorePlan | None:
    """The newest checkpoint of the job that verifies in the store, as download URLs; None
    when there is none."""
    store = open_store(settings)
    parent = checkpoints_prefix(sweep_id, job_id)
    name = newest_verified(store, parent)
    manifest = read_manifest(store, f"{parent}/{name}") if name else None
    if name is None or manifest is None:
        return None
    objects = [
        DownloadObject(
            name=entry.name,
            size=entry.size,
            sha256=entry.sha256,
            url=store.presign_download(f"{parent}/{name}/{entry.name}"),
        )
        for entry in manifest.objects
    ]
    return RestorePlan(name=name, objects=objects)


def restore_checkpoint(plan_file: Path, checkpoints_dir: Path) -> Path | None:
    """Download the plan's checkpoint into `checkpoints_dir` (unless it is there already) and
    delete the plan; None when there is no plan."""
    if not plan_file.is_file():
        return None
    plan = RestorePlan.model_validate_json(plan_file.read_text())
    target = checkpoints_dir / plan.name
    if not target.is_dir():
        staging = checkpoints_dir / f".restore-{plan.name}"
        shutil.rmtree(staging, ignore_errors=True)
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT_S) as http:
            for obj in plan.objects:
                _download(http, obj, staging / obj.name)
        staging.replace(target)
        log.info("downloaded checkpoint %s from the store", plan.name)
    plan_file.unlink()
    return target


def _download(http: httpx.Client, obj: DownloadObject, dest: Path) -> None:
    """Download one object and check its size and SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        for block in _blocks(http, obj):
            digest.update(block)
            out.write(block)
    if dest.stat().st_size != obj.size or digest.hexdigest() != obj.sha256:
        raise StoreError(f"downloaded {obj.name} does not match the store's manifest")


def _blocks(http: httpx.Client, obj: DownloadObject) -> Iterator[bytes]:
    if obj.url.startswith("file://"):
        with Path(unquote(urlsplit(obj.url).path)).open("rb") as handle:
            yield from iter(lambda: handle.read(BLOCK), b"")
        return
    try:
        with http.stream("GET", obj.url) as reply:
            if reply.status_code != 200:
                raise StoreError(f"download of {obj.name}: HTTP {reply.status_code}")
            yield from reply.iter_bytes(BLOCK)
    except httpx.HTTPError as exc:
        raise StoreError(f"download of {obj.name}: {exc}") from None
