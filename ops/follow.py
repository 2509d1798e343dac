"""Following a sweep while it runs: one progress bar per job (tokens trained of its budget, with
its stage) and one for the sweep (jobs finished), until the sweep's finalizer has run."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ops.errors import OpsError
from queue_app.records import JobRecord, SweepRecord
from queue_app.statemachine import JobState
from queue_app.store import Store


class SweepTimeout(OpsError):
    """The sweep did not finish within the time given."""


def _bar_state(job: JobRecord) -> tuple[float, float, str]:
    """(completed, total, label) of one job's bar."""
    total = float(job.job_spec.config.train.total_tokens)
    done = float(job.progress.get("tokens") or 0)
    if job.state is JobState.SUCCEEDED:
        done = total
    label = str(job.state)
    if job.state is JobState.TRAINING and job.progress.get("loss") is not None:
        label += f" loss {job.progress['loss']:.4g}"
    if job.attempt > 1:
        label += f" (attempt {job.attempt})"
    return min(done, total), total, label


def follow_sweep(
    console: Console,
    store: Store,
    sweep_id: str,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> SweepRecord:
    """Show live progress until the sweep is finalized; returns the finished sweep record."""
    sweep = store.sweep(sweep_id)
    progress = Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=console,
    )
    started = time.monotonic()
    with progress:
        overall = progress.add_task(f"sweep {sweep.name}", total=len(sweep.job_ids), label="")
        bars: dict[str, TaskID] = {}
        while True:
            jobs = store.sweep_jobs(sweep_id)
            for job in jobs:
                done, total, label = _bar_state(job)
                if job.job_id not in bars:
                    bars[job.job_id] = progress.add_task(f"  {job.name}", total=total, label="")
                progress.update(bars[job.job_id], completed=done, total=total, label=label)
            finished = sum(j.terminal for j in jobs)
            progress.update(overall, completed=finished, label="jobs finished")
            sweep = store.sweep(sweep_id)
            if sweep.finished_at:
                return sweep
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise SweepTimeout(f"sweep {sweep_id} did not finish within {timeout_s:.0f}s")
            time.sleep(poll_s)
