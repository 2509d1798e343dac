"""Pulling a finished segment's checkpoint off its instance into the store (jobs.checkpoints):
the one function that `supervise_training`, the watchdog's drain step and teardown all use, so
a checkpoint counts as kept only once it verifies in the store, whoever pulled it.

Only one process pulls a job's checkpoint at a time (a renewed Redis lease); the others are told
so and look again later. SSH errors (`jobs.ssh.SSHError`) pass through to the caller.
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
    """Copy the checkpoint of `record`'s finished segment into the store and verify it there;
    record it as the job's latest. False when another process is pulling it right now."""
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
    """Copy the checkpoint of `record`'s finished segment into the store and verify it there,
    recording nothing (a noticed attempt's hand-off records it its own way); its name, or None
    when another process is pulling it right now."""
    if not record.segment_checkpoint:
        raise CheckpointNotKept(f"segment {record.segment} finished without a checkpoint")
    with store.lease(f"pull:{job.job_id}", PULL_LEASE_S, renew=True) as held:
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
