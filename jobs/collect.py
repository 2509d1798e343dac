"""Stage `collect`: final SAE weights, metrics, eval report, plots and the worker's log from the
instance into the store (jobs.objectstore: `<sweep>/<job>/final/`, `<sweep>/<job>/logs/`); the
final folder is published with its manifest and verified there."""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

from jobs.errors import StageFailed
from jobs.instances import open_ssh
from jobs.objectstore import (
    StoreError,
    describe_file,
    final_prefix,
    job_prefix,
    open_store,
    publish_folder,
    worker_log_key,
)
from jobs.pipeline import JobRef
from jobs.remote import RemoteLayout, layout_for
from jobs.ssh import SSHError, SSHSession
from jobs.stage_base import StageContext, stage
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store

log = logging.getLogger(__name__)


@stage("collect")
def collect(ctx: StageContext) -> None:
    """Pull `run/final/` and the worker log; record the metrics on the job. A pack job's
    members were collected as each finished (jobs.pack_stages): only the log is left."""
    ctx.advance(JobState.COLLECTING)
    instance = ctx.require_instance()
    layout = layout_for(instance)
    sweep_id, job_id = ctx.ref.sweep_id, ctx.ref.job_id
    if ctx.job.members:
        with open_ssh(instance, ctx.settings) as ssh:
            fetch_worker_log(ssh, layout, ctx.settings, sweep_id, job_id, ctx.ref.attempt)
    else:
        collect_final(ctx.settings, ctx.store, instance, ctx.ref, layout.final_dir, log_too=True)
    ctx.advance(JobState.TERMINATING)


def collect_final(
    settings: Settings,
    records: Store,
    instance: InstanceRecord,
    ref: JobRef,
    remote_final: str,
    log_too: bool = False,
) -> None:
    """Pull `remote_final` into the store as `ref`'s job's final/ (and, `log_too`, the worker
    log), publish it and record its metrics on the job."""
    sweep_id, job_id = ref.sweep_id, ref.job_id
    store = open_store(settings)
    final = store.local_dir(final_prefix(sweep_id, job_id))
    with open_ssh(instance, settings) as ssh:
        ssh.get_dir(remote_final, final)
        if log_too:
            fetch_worker_log(ssh, layout_for(instance), settings, sweep_id, job_id, ref.attempt)
    metrics_file = final / "metrics.json"
    if not metrics_file.exists():
        where = posixpath.relpath(remote_final, layout_for(instance).workdir)
        raise StageFailed(f"training finished without {metrics_file.name} in {where}")
    publish_folder(store, final_prefix(sweep_id, job_id), final)
    metrics = headline_metrics(json.loads(metrics_file.read_text()))
    location = store.location(job_prefix(sweep_id, job_id))
    records.update_job(job_id, ref.attempt, metrics=metrics, artifacts_dir=location)
    log.info("collected artifacts of %s into %s", job_id, location)


def fetch_worker_log(
    ssh: SSHSession,
    layout: RemoteLayout,
    settings: Settings,
    sweep_id: str,
    job_id: str,
    attempt: int,
) -> None:
    """Copy the GPU-side worker's log of `attempt` into the store, where `saefleet logs` reads
    it once the instance is gone (best effort: a failure is logged)."""
    store = open_store(settings)
    key = worker_log_key(sweep_id, job_id, attempt)
    local = store.local_dir(key)
    try:
        ssh.get(layout.worker_log, local)
        store.put_file(key, local, describe_file(local, key))
    except (SSHError, StoreError) as exc:
        log.warning("could not keep the worker log: %s", exc)


def headline_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """The scalars a sweep compares jobs by (the full report stays in metrics.json)."""
    evals = raw.get("evals", {})
    out = {k: v for k, v in evals.items() if isinstance(v, int | float | bool)}
    probe = evals.get("pii_probe") or {}
    for key in ("mean_probe_f1", "mean_latent_f1"):
        if key in probe:
            out[f"pii_{key}"] = probe[key]
    train = raw.get("train", {})
    for key in ("steps", "tokens", "early_stopped", "tokens_saved"):
        if key in train:
            out[key] = train[key]
    return out
