"""A job's checkpoints in the store (jobs.objectstore): `<sweep>/<job>/checkpoints/<step-…>/`.

Instances upload their checkpoints themselves (jobs.checkpoint_upload, jobs.upload_grants);
for the one case where they cannot reach the store (a cloud instance, the file store), a pulled
checkpoint lands in the store's local folder for it (the file store's own folder), is checked
against the trainer's manifest (the copy is whole), then published: uploaded with a store
manifest that must verify in the store before the checkpoint counts. Resume takes the newest
checkpoint that verifies in the store (a corrupt or partial newer one falls back to the one
before). Reads files only, so the control plane stays torch-free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.objectstore import (
    checkpoints_prefix,
    fetch_folder,
    newest_verified,
    open_store,
    publish_folder,
    verify_folder,
)
from queue_app.settings import Settings
from sae.checkpoint import verify_checkpoint


def newest_stored_checkpoint(settings: Settings, sweep_id: str, job_id: str) -> Path | None:
    """The newest checkpoint of a job that verifies in the store, as a local folder
    (downloaded when the store is remote), or None when there is none."""
    store = open_store(settings)
    parent = checkpoints_prefix(sweep_id, job_id)
    name = newest_verified(store, parent)
    return fetch_folder(store, f"{parent}/{name}") if name else None


def pulled_checkpoint_dir(settings: Settings, sweep_id: str, job_id: str, name: str) -> Path:
    """Where a pull puts the checkpoint `name` before it is published."""
    return open_store(settings).local_dir(f"{checkpoints_prefix(sweep_id, job_id)}/{name}")


def checkpoint_stored(settings: Settings, sweep_id: str, job_id: str, name: str) -> bool:
    """The checkpoint `name` verifies in the store (it counts)."""
    return verify_folder(open_store(settings), f"{checkpoints_prefix(sweep_id, job_id)}/{name}")


def store_pulled_checkpoint(settings: Settings, sweep_id: str, job_id: str, name: str) -> bool:
    """Publish the pulled checkpoint `name`: False when the pulled copy does not verify against
    the trainer's manifest; StoreError when the store refuses it or it does not verify there."""
    local = pulled_checkpoint_dir(settings, sweep_id, job_id, name)
    if not verify_pulled_checkpoint(local):
        return False
    publish_folder(open_store(settings), f"{checkpoints_prefix(sweep_id, job_id)}/{name}", local)
    return True


def verify_pulled_checkpoint(path: Path) -> bool:
    """A local checkpoint folder is whole (the trainer's own size and checksum manifest)."""
    return path.is_dir() and verify_checkpoint(path)


def prune_stored_checkpoints(settings: Settings, sweep_id: str, job_id: str, keep: int) -> None:
    """Keep the newest `keep` checkpoints of a job in the store (a long run stores one per
    segment); their local copies go with them."""
    store = open_store(settings)
    parent = checkpoints_prefix(sweep_id, job_id)
    for name in store.list_names(parent)[:-keep]:
        store.delete_prefix(f"{parent}/{name}")
        shutil.rmtree(store.local_dir(f"{parent}/{name}"), ignore_errors=True)
