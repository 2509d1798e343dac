"""A job's result as the sweep chord receives it: plain data built from the stored records, so
that a duplicate of the last stage reports exactly the same thing."""

from __future__ import annotations

from typing import Any

from queue_app.state import Store


def job_result(store: Store, job_id: str) -> dict[str, Any]:
    job = store.job(job_id)
    attempts = store.attempts(job_id)
    instances = [store.instance(a.instance_id) for a in attempts if a.instance_id]
    cost = sum(i.cost_usd() for i in instances)
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
