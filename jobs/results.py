"""What a sweep yields: each job's `JobResult` (what its chain hands the sweep chord) and the
sweep's `SweepSummary` (written as summary.json, its JSON Schema in docs/summary.schema.json).

A JobResult is built from the stored records only, so that a duplicate of the last stage
reports exactly the same thing. It crosses the broker as JSON (`model_dump(mode="json")`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from jobs.job_cost import costs_by_job, hours_by_job, job_instances
from queue_app.statemachine import JobState
from queue_app.store import Store

BEST_METRIC = "fvu"  # lower is better


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class JobResult(_Result):
    """One job's outcome, as the sweep chord receives it."""

    job_id: str
    """The job's id."""
    index: int
    """Its position in the sweep's grid order."""
    name: str
    """The grid point as `path=value,...`."""
    state: JobState
    """Its final state."""
    reason: str | None
    """Why it failed, was cancelled or capped."""
    attempts: int
    """How many attempts it took."""
    preemptions: int
    """How many instances were lost under it."""
    cost_usd: float
    """What its instances cost, in USD."""
    instance_hours: float
    """How long its instances ran."""
    overrides: dict[str, Any]
    """The grid overrides that made it."""
    metrics: dict[str, Any]
    """The finished run's metrics (fvu, l0, ...)."""
    latest_checkpoint: str | None
    """The name of its newest checkpoint pulled home."""
    artifacts_dir: str | None
    """Where its collected artifacts are."""


class BestJob(_Result):
    """The sweep's best succeeded job by `metric`."""

    job_id: str
    """The job's id."""
    name: str
    """The grid point as `path=value,...`."""
    metric: str
    """The metric it is best by (lower is better)."""
    value: float
    """Its value of the metric."""
    artifacts_dir: str | None
    """Where its artifacts are."""


class SweepSummary(_Result):
    """A finished sweep: its jobs, the best one, and what it cost (summary.json)."""

    schema_version: Literal[1] = 1
    """Version of this layout (files written before versioning read as 1)."""
    sweep_id: str
    """The sweep's id."""
    name: str
    """The sweep file's name."""
    finished_at: float
    """When the summary was written (Unix time)."""
    jobs: list[JobResult]
    """One result per job, in grid order."""
    states: dict[str, int]
    """How many jobs ended in each state."""
    best: BestJob | None
    """The best succeeded job, if any job succeeded with the metric."""
    cost_usd: float
    """What the sweep's instances cost, in USD."""
    instance_hours: float
    """How long the sweep's instances ran."""
    preemptions: int
    """Instances lost under the sweep's jobs."""
    tokens_saved_by_early_stopping: int
    """Training tokens that early stopping did not spend."""

    def line(self) -> str:
        """One human line: states, best job, cost, hours, preemptions."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
        best = self.best
        best_text = f"best {best.name} ({best.metric} {best.value:.4g})" if best else "no best"
        return (
            f"{states}; {best_text}; ${self.cost_usd:.2f}, "
            f"{self.instance_hours:.2f} instance-hours, {self.preemptions} preemptions"
        )


def job_result(store: Store, job_id: str) -> JobResult:
    job = store.job(job_id)
    instances = job_instances(store, job_id)
    return JobResult(
        job_id=job.job_id,
        index=job.index,
        name=job.name,
        state=job.state,
        reason=job.reason,
        attempts=job.attempt,
        preemptions=job.preemptions,
        cost_usd=round(costs_by_job(instances).get(job_id, 0.0), 6),
        instance_hours=round(hours_by_job(instances).get(job_id, 0.0), 6),
        overrides=job.job_spec.overrides,
        metrics=job.metrics,
        latest_checkpoint=job.latest_checkpoint,
        artifacts_dir=job.artifacts_dir,
    )


def build_summary(sweep_id: str, name: str, results: list[JobResult]) -> SweepSummary:
    succeeded = [r for r in results if r.state is JobState.SUCCEEDED and BEST_METRIC in r.metrics]
    best = min(succeeded, key=lambda r: r.metrics[BEST_METRIC], default=None)
    tokens_saved = sum(int(r.metrics.get("tokens_saved", 0) or 0) for r in results)
    return SweepSummary(
        sweep_id=sweep_id,
        name=name,
        finished_at=time.time(),
        jobs=results,
        states=dict(Counter(str(r.state) for r in results)),
        best=BestJob(
            job_id=best.job_id,
            name=best.name,
            metric=BEST_METRIC,
            value=best.metrics[BEST_METRIC],
            artifacts_dir=best.artifacts_dir,
        )
        if best
        else None,
        cost_usd=round(sum(r.cost_usd for r in results), 6),
        instance_hours=round(sum(r.instance_hours for r in results), 6),
        preemptions=sum(r.preemptions for r in results),
        tokens_saved_by_early_stopping=tokens_saved,
    )


def summary_schema_text() -> str:
    """summary.json's JSON Schema as checked in at docs/summary.schema.json (regenerate it with
    `python -m jobs.results > docs/summary.schema.json`)."""
    return json.dumps(SweepSummary.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(summary_schema_text(), end="")
