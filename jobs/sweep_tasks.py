"""`finalize_sweep`, the sweep chord's body: runs once, after every job chain has yielded its
result, and writes the sweep's summary (best SAE, cost, GPU-hours, preemptions, early-stopping
savings) as `<sweep>/summary.json` plus an FVU-vs-L0 plot into the store (jobs.objectstore)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from celery import Task

from jobs.objectstore import describe_file, open_store, summary_key
from jobs.pipeline import FINALIZE_SWEEP_TASK
from jobs.results import JobResult, build_summary
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.logs import log_context
from queue_app.notify import Event, notify
from queue_app.settings import get_settings

log = logging.getLogger(__name__)


@app.task(bind=True, name=FINALIZE_SWEEP_TASK)
def finalize_sweep(task: Task, results: list[dict[str, Any]], sweep_id: str) -> dict[str, Any]:
    """Summarise a finished sweep (idempotent: a redelivery rewrites the same files)."""
    store, settings = get_store(), get_settings()
    with log_context(sweep=sweep_id):
        sweep = store.sweep(sweep_id)
        jobs = [JobResult.model_validate(r) for r in results]
        summary = build_summary(sweep_id, sweep.name, jobs)
        artifacts = open_store(settings)
        key = summary_key(sweep_id)
        text = json.dumps(summary.model_dump(mode="json"), indent=2, sort_keys=True)
        artifacts.put_bytes(key, text.encode())
        plot = artifacts.local_dir(f"{sweep_id}/fvu_vs_l0.png")
        if plot_frontier(jobs, plot):
            artifacts.put_file(f"{sweep_id}/{plot.name}", plot, describe_file(plot, plot.name))
        path = artifacts.location(key)
        runs = store.finish_sweep(sweep_id, path)
        log.info("sweep finalized (run %d): %s", runs, summary.line())
        if runs == 1:
            notify(Event.SWEEP_FINISHED, sweep=sweep_id, summary=summary.line())
        return {"sweep_id": sweep_id, "summary": path}


def plot_frontier(results: list[JobResult], path: Path) -> bool:
    """FVU against L0, one point per finished job (skipped when no job has both)."""
    points = [
        {"name": r.name, "fvu": r.metrics["fvu"], "l0": r.metrics["l0"]}
        for r in results
        if "l0" in r.metrics and "fvu" in r.metrics
    ]
    if points:
        from sae.plots import plot_frontier as draw  # matplotlib only, no torch

        path.parent.mkdir(parents=True, exist_ok=True)
        draw(points, path)
    return bool(points)
