"""The control plane's side of checkpoint uploads (jobs.upload_board): grant each upload its
URLs, re-issue them when they expire, complete what the instance uploaded, write the manifest
last and verify it in the store without downloading; only then does the checkpoint count (the
job's latest, the attempt's `pulled_segment`).

A checkpoint whose uploads do not complete or verify (a corrupt or missing part, an upload cut
short by a preemption) never counts: the previous one stays the job's latest. Whoever waits on a
job's checkpoint serves its board (supervise_training, the drain step, teardown), under the
job's pull lease (jobs.checkpoint_pull).
"""

from __future__ import annotations

import logging

from jobs.checkpoints import prune_stored_checkpoints
from jobs.objectstore import (
    ObjectStore,
    StoreError,
    checkpoints_prefix,
    finish_uploaded_folder,
    open_store,
    verify_folder,
)
from jobs.upload_board import Outcome, UploadBoard, UploadEntry, UploadGrant
from queue_app.records import InstanceRecord, JobRecord
from queue_app.settings import Settings
from queue_app.store import Store

log = logging.getLogger(__name__)


def instance_uploads(instance: InstanceRecord, settings: Settings) -> bool:
    """The instance moves its checkpoints to and from the store itself: always with an object
    store; with the file store only when it shares this machine's disk (the local provider).
    Otherwise (a cloud instance and a file store) checkpoints are pulled and pushed over SFTP."""
    store_url = open_store(settings).url
    return not store_url.startswith("file:") or instance.provider == "local"


def serve_uploads(store: Store, settings: Settings, job: JobRecord, attempt: int) -> None:
    """Move every upload of the attempt on by one step each; count what verifies."""
    board = UploadBoard(store.r, job.job_id, attempt)
    objects = open_store(settings)
    parent = checkpoints_prefix(job.sweep_id, job.job_id)
    for segment, entry in sorted(board.entries().items()):
        if entry.outcome is not None or entry.request is None:
            continue
        prefix = f"{parent}/{entry.request.name}"
        if entry.failed is not None:
            _abort(objects, entry)
            board.settle(segment, Outcome.FAILED)
            log.warning("segment %d: the instance's upload failed: %s", segment, entry.failed)
        elif entry.report is not None:
            kept = _finish(objects, prefix, entry)
            board.settle(segment, Outcome.KEPT if kept else Outcome.REJECTED)
            if kept:
                _count(store, settings, job, attempt, segment, entry.request.name)
            else:
                log.error("segment %d: %s does not verify; not counted", segment, prefix)
        elif entry.grant is None:
            if verify_folder(objects, prefix):  # the same checkpoint as an earlier segment's
                board.settle(segment, Outcome.KEPT)
                _count(store, settings, job, attempt, segment, entry.request.name)
                continue
            plans = [
                objects.presign_upload(f"{prefix}/{obj.name}", obj)
                for obj in entry.request.manifest.objects
            ]
            board.set_grant(segment, UploadGrant(plans=plans))
        elif entry.reissue > entry.grant.answers_reissue:
            plans = [objects.reissue(plan) for plan in entry.grant.plans]
            board.set_grant(segment, UploadGrant(plans=plans, answers_reissue=entry.reissue))
            log.info("segment %d: re-issued the upload URLs of %s", segment, prefix)


def _finish(objects: ObjectStore, prefix: str, entry: UploadEntry) -> bool:
    """Complete the uploads and verify the folder (False: it does not count)."""
    assert entry.request is not None and entry.grant is not None and entry.report is not None
    uploads = list(zip(entry.grant.plans, entry.report.parts, strict=False))
    if len(uploads) != len(entry.request.manifest.objects):
        _abort(objects, entry)
        return False
    try:
        return finish_uploaded_folder(objects, prefix, entry.request.manifest, uploads)
    except StoreError as exc:
        log.error("completing the upload of %s: %s", prefix, exc)
        _abort(objects, entry)
        return False


def _abort(objects: ObjectStore, entry: UploadEntry) -> None:
    for plan in entry.grant.plans if entry.grant else []:
        try:
            objects.abort_upload(plan)
        except StoreError as exc:
            log.warning("aborting the upload of %s: %s", plan.key, exc)


def _count(
    store: Store, settings: Settings, job: JobRecord, attempt: int, segment: int, name: str
) -> None:
    """The checkpoint `name` of `segment` is kept: the job's latest unless a newer one is."""
    latest = store.job(job.job_id).latest_checkpoint
    if latest is None or name >= latest:
        store.update_job(job.job_id, attempt, latest_checkpoint=name)
    if segment > store.attempt(job.job_id, attempt).pulled_segment:
        store.update_attempt(job.job_id, attempt, pulled_segment=segment)
    keep = job.job_spec.config.train.keep_checkpoints
    prune_stored_checkpoints(settings, job.sweep_id, job.job_id, keep)
    log.info("checkpoint %s of segment %d is in the store", name, segment)
