"""Stage `collect`: final SAE weights, metrics, eval report, plots and the worker's log from the
instance into the artifact store (`SAEFLEET_HOME/artifacts/<sweep>/<job>/`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jobs.errors import StageFailed
from jobs.instances import open_ssh
from jobs.remote import RemoteLayout, layout_for
from jobs.ssh import SSHError, SSHSession
from jobs.stage_base import StageContext, stage
from queue_app.statemachine import JobState

log = logging.getLogger(__name__)


@stage("collect")
def collect(ctx: StageContext) -> None:
    """Pull `run/final/` and the worker log; record the metrics on the job."""
    ctx.advance(JobState.COLLECTING)
    instance = ctx.require_instance()
    layout = layout_for(instance)
    job_dir = ctx.settings.job_dir(ctx.ref.sweep_id, ctx.ref.job_id)
    final = job_dir / "final"
    with open_ssh(instance, ctx.settings) as ssh:
        ssh.get_dir(layout.final_dir, final)
        fetch_worker_log(ssh, layout, job_dir, ctx.ref.attempt)
    metrics_file = final / "metrics.json"
    if not metrics_file.exists():
        raise StageFailed(f"training finished without {metrics_file.name} in run/final")
    metrics = headline_metrics(json.loads(metrics_file.read_text()))
    ctx.store.update_job(
        ctx.ref.job_id, ctx.ref.attempt, metrics=metrics, artifacts_dir=str(job_dir)
    )
    log.info("collected artifacts into %s", job_dir)
    ctx.advance(JobState.TERMINATING)


def fetch_worker_log(ssh: SSHSession, layout: RemoteLayout, job_dir: Path, attempt: int) -> None:
    """Copy the GPU-side worker's log of `attempt` into the artifact store, where `saefleet
    logs` reads it once the instance is gone (best effort: a failure is logged)."""
    try:
        ssh.get(layout.worker_log, job_dir / "logs" / f"worker-a{attempt}.log")
    except SSHError as exc:
        log.warning("could not fetch the worker log: %s", exc)


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
