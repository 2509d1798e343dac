"""The demo's results table: each job told apart (its id within the sweep and its grid values)
in an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from ops.demo import results_table
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import make_sweep


def test_results_rows_tell_the_jobs_apart_at_80_columns(store: Store) -> None:
    states = [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED]
    jobs = make_sweep(store, "swf46d4be", states, budget_usd=None)
    for job in jobs[:2]:
        metrics = {"fvu": 0.1, "l0": 7.9, "ce_loss_recovered": 0.97, "pii_mean_probe_f1": 0.93}
        store.update_job(job.job_id, 1, metrics=metrics)
    console = Console(width=80, record=True)
    console.print(results_table(store, "swf46d4be"))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    for index, (k, state) in enumerate(((8, "SUCCEEDED"), (16, "SUCCEEDED"), (32, "FAILED"))):
        [row] = [line for line in lines if f" {index:04d} " in line]
        assert f"k={k}" in row and state in row
