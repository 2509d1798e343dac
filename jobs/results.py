"""A job's result as the sweep chord receives it: plain data built from the stored records, so
that a duplicate of the last stage reports exactly the same thing."""

from __future__ import annotations

from typing import Any

from jobs.job_cost import costs_by_job, job_instances
from queue_app.state import Store


def job_result(store: Store, job_id: str) -> dict[str, Any]:
    job = store.job(job_id)
    instances = job_instances(store, job_id)
    cost = costs_by_job(instances).get(job_id, 0.0)
    hours = sum(i.running_hours() for i in instances)
    return {
        "job_id": job.job_id,
        "index": job.index,
        "name": job.name,
        "state": str(job.state),
        "reason": job.reason,
        "attempts": job.attempt,
        "preemptions": job.preemptions,
        "cost_usd": round(cost, 6),
        "instance_hours": round(hours, 6),
        "overrides": job.spec.get("overrides", {}),
        "metrics": job.metrics,
        "latest_checkpoint": job.latest_checkpoint,
        "artifacts_dir": job.artifacts_dir,
    }
