"""Getting a finished segment's checkpoint into the store: the one function that
`supervise_training`, the watchdog's drain step and teardown all use, so a checkpoint counts as
kept only once it verifies in the store, whoever brought it there.

Instances upload their checkpoints themselves, in the background (jobs.checkpoint_upload), when
they can reach the store (jobs.upload_grants.instance_uploads): here the caller serves the
attempt's upload board and learns whether the segment's checkpoint is kept yet. Otherwise (a
cloud instance with the file store, which only this host's disk holds) the checkpoint is
pulled over SFTP into the store's folder and verified there, while the GPU waits. A pack's
members go the same way, each on its own board (jobs.pack_checkpoints).

Only one process serves or pulls a job's checkpoints at a time (a renewed Redis lease); the
others are told so and look again later. SSH errors (`jobs.ssh.SSHError`) pass through.
"""

from __future__ import annotations

import logging
import posixpath

from jobs.checkpoints import (
    checkpoint_stored,
    prune_stored_checkpoints,
    pulled_checkpoint_dir,
    store_pulled_checkpoint,
    verify_pulled_checkpoint,
)
from jobs.errors import JobsError
from jobs.instances import open_ssh
from jobs.remote import layout_for
from jobs.upload_board import Outcome, UploadBoard
from jobs.upload_grants import instance_uploads, serve_uploads
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord
from queue_app.settings import Settings
from queue_app.store import Store

log = logging.getLogger(__name__)

PULL_LEASE_S = 60.0  # renewed while a pull runs; lapses this soon after its holder is killed


class CheckpointNotKept(JobsError):
    """A finished segment's checkpoint cannot be kept: it wrote none, or what was pulled does
    not verify (permanent: pulling again copies the same files)."""


def pull_segment_checkpoint(
    store: Store,
    settings: Settings,
    job: JobRecord,
    instance: InstanceRecord,
    record: AttemptRecord,
) -> bool:
    """Bring the checkpoint of `record`'s finished segment into the store and verify it there;
    record it as the job's latest. False while it is not kept yet: its upload is still going on,
    or another process holds the job's lease right now."""
    if instance_uploads(instance, settings):
        if not record.segment_checkpoint:
            raise CheckpointNotKept(f"segment {record.segment} finished without a checkpoint")
        with store.lease(_lease_name(job.job_id), PULL_LEASE_S, renew=True) as held:
            return held and _uploaded(store, settings, job, record)
    name = store_segment_checkpoint(store, settings, job, instance, record)
    if name is None:
        return False
    store.update_job(job.job_id, record.attempt, latest_checkpoint=name)
    store.update_attempt(job.job_id, record.attempt, pulled_segment=record.segment)
    return True


def store_segment_checkpoint(
    store: Store,
    settings: Settings,
    job: JobRecord,
    instance: InstanceRecord,
    record: AttemptRecord,
) -> str | None:
    """Pull the checkpoint of `record`'s finished segment over SFTP into the store and verify it
    there, recording nothing (a noticed attempt's hand-off records it its own way, and pulls
    even from an instance that uploads: its background upload may not end before the instance
    does); its name, or None when another process is pulling it right now."""
    if not record.segment_checkpoint:
        raise CheckpointNotKept(f"segment {record.segment} finished without a checkpoint")
    with store.lease(_lease_name(job.job_id), PULL_LEASE_S, renew=True) as held:
        if not held:
            return None
        name = posixpath.basename(record.segment_checkpoint.rstrip("/"))
        if not checkpoint_stored(settings, job.sweep_id, job.job_id, name):
            local = pulled_checkpoint_dir(settings, job.sweep_id, job.job_id, name)
            remote = posixpath.join(layout_for(instance).run_dir, record.segment_checkpoint)
            if not verify_pulled_checkpoint(local):
                with open_ssh(instance, settings) as ssh:
                    ssh.get_dir(remote, local)
            if not store_pulled_checkpoint(settings, job.sweep_id, job.job_id, name):
                raise CheckpointNotKept(f"checkpoint {name} failed verification after the pull")
        keep = job.job_spec.config.train.keep_checkpoints
        prune_stored_checkpoints(settings, job.sweep_id, job.job_id, keep)
        log.info("checkpoint %s of segment %d is in the store", name, record.segment)
        return name


def serve_checkpoint_uploads(
    store: Store, settings: Settings, job: JobRecord, attempt: int
) -> None:
    """Move the attempt's checkpoint uploads on (jobs.upload_grants), unless another process
    serves them right now."""
    with store.lease(_lease_name(job.job_id), PULL_LEASE_S, renew=True) as held:
        if held:
            serve_uploads(store, settings, job, attempt)


def _uploaded(store: Store, settings: Settings, job: JobRecord, record: AttemptRecord) -> bool:
    """Serve the attempt's uploads; True once the segment's checkpoint is kept."""
    serve_uploads(store, settings, job, record.attempt)
    if store.attempt(job.job_id, record.attempt).pulled_segment >= record.segment:
        return True
    outcome = UploadBoard(store.r, job.job_id, record.attempt).outcome(record.segment)
    if outcome in (Outcome.REJECTED, Outcome.FAILED):
        raise CheckpointNotKept(f"segment {record.segment}'s checkpoint upload: {outcome.value}")
    return False


def _lease_name(job_id: str) -> str:
    return f"pull:{job_id}"
