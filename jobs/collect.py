"""Stage `collect`: final SAE weights, metrics, eval report, plots and the worker's log from the
instance into the store (jobs.objectstore: `<sweep>/<job>/final/`, `<sweep>/<job>/logs/`); the
final folder is published with its manifest and verified there."""

from __future__ import annotations

import json
import logging
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
from jobs.remote import RemoteLayout, layout_for
from jobs.ssh import SSHError, SSHSession
from jobs.stage_base import StageContext, stage
from queue_app.settings import Settings
from queue_app.statemachine import JobState

log = logging.getLogger(__name__)


@stage("collect")
def collect(ctx: StageContext) -> None:
    """Pull `run/final/` and the worker log; record the metrics on the job."""
    ctx.advance(JobState.COLLECTING)
    instance = ctx.require_instance()
    layout = layout_for(instance)
    sweep_id, job_id = ctx.ref.sweep_id, ctx.ref.job_id
    store = open_store(ctx.settings)
    final = store.local_dir(final_prefix(sweep_id, job_id))
    with open_ssh(instance, ctx.settings) as ssh:
        ssh.get_dir(layout.final_dir, final)
        fetch_worker_log(ssh, layout, ctx.settings, sweep_id, job_id, ctx.ref.attempt)
    metrics_file = final / "metrics.json"
    if not metrics_file.exists():
        raise StageFailed(f"training finished without {metrics_file.name} in run/final")
    publish_folder(store, final_prefix(sweep_id, job_id), final)
    metrics = headline_metrics(json.loads(metrics_file.read_text()))
    location = store.location(job_prefix(sweep_id, job_id))
    ctx.store.update_job(job_id, ctx.ref.attempt, metrics=metrics, artifacts_dir=location)
    log.info("collected artifacts into %s", location)
    ctx.advance(JobState.TERMINATING)


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
