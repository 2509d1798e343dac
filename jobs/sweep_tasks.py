"""`finalize_sweep`, the sweep chord's body: runs once, after every job chain has yielded its
result, and writes the sweep's summary (best SAE, cost, GPU-hours, preemptions, early-stopping
savings) as `summary.json` plus an FVU-vs-L0 plot into the sweep's artifact folder."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Task

from jobs.pipeline import FINALIZE_SWEEP_TASK
from queue_app.celery_app import app
from queue_app.logs import log_context
from queue_app.notify import Event, notify
from queue_app.settings import get_settings
from queue_app.state import get_store
from sae.atomic_files import write_atomic

log = logging.getLogger(__name__)

BEST_METRIC = "fvu"  # lower is better


@app.task(bind=True, name=FINALIZE_SWEEP_TASK)
def finalize_sweep(task: Task, results: list[dict[str, Any]], sweep_id: str) -> dict[str, Any]:
    """Summarise a finished sweep (idempotent: a redelivery rewrites the same files)."""
    store, settings = get_store(), get_settings()
    with log_context(sweep=sweep_id):
        sweep = store.sweep(sweep_id)
        summary = build_summary(sweep_id, sweep.name, results)
        out_dir = settings.sweep_dir(sweep_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "summary.json"
        write_atomic(path, json.dumps(summary, indent=2, sort_keys=True))
        plot_frontier(results, out_dir / "fvu_vs_l0.png")
        runs = store.finish_sweep(sweep_id, str(path))
        log.info("sweep finalized (run %d): %s", runs, summary_line(summary))
        if runs == 1:
            notify(Event.SWEEP_FINISHED, sweep=sweep_id, summary=summary_line(summary))
        return {"sweep_id": sweep_id, "summary": str(path)}


def build_summary(sweep_id: str, name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    succeeded = [r for r in results if r["state"] == "SUCCEEDED" and BEST_METRIC in r["metrics"]]
    best = min(succeeded, key=lambda r: r["metrics"][BEST_METRIC], default=None)
    tokens_saved = sum(int(r["metrics"].get("tokens_saved", 0) or 0) for r in results)
    return {
        "sweep_id": sweep_id,
        "name": name,
        "finished_at": time.time(),
        "jobs": results,
        "states": dict(Counter(r["state"] for r in results)),
        "best": {
            "job_id": best["job_id"],
            "name": best["name"],
            "metric": BEST_METRIC,
            "value": best["metrics"][BEST_METRIC],
            "artifacts_dir": best["artifacts_dir"],
        }
        if best
        else None,
        "cost_usd": round(sum(r["cost_usd"] for r in results), 6),
        "instance_hours": round(sum(r["instance_hours"] for r in results), 6),
        "preemptions": sum(r["preemptions"] for r in results),
        "tokens_saved_by_early_stopping": tokens_saved,
    }


def summary_line(summary: dict[str, Any]) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items()))
    best = summary["best"]
    best_text = f"best {best['name']} ({best['metric']} {best['value']:.4g})" if best else "no best"
    return (
        f"{states}; {best_text}; ${summary['cost_usd']:.2f}, "
        f"{summary['instance_hours']:.2f} instance-hours, {summary['preemptions']} preemptions"
    )


def plot_frontier(results: list[dict[str, Any]], path: Path) -> None:
    """FVU against L0, one point per finished job (skipped when no job has both)."""
    points = [
        {"name": r["name"], "fvu": r["metrics"]["fvu"], "l0": r["metrics"]["l0"]}
        for r in results
        if "l0" in r["metrics"] and "fvu" in r["metrics"]
    ]
    if points:
        from sae.plots import plot_frontier as draw  # matplotlib only, no torch

        draw(points, path)
