"""Redis key names of the state store: one home for every key the records live under."""

from __future__ import annotations

PREFIX = "sf"


def sweep_key(sweep_id: str) -> str:
    return f"{PREFIX}:sweep:{sweep_id}"


def sweep_jobs_key(sweep_id: str) -> str:
    return f"{PREFIX}:sweep:{sweep_id}:jobs"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def attempt_key(job_id: str, attempt: int) -> str:
    return f"{PREFIX}:job:{job_id}:attempt:{attempt}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def instance_key(instance_id: str) -> str:
    return f"{PREFIX}:instance:{instance_id}"


SWEEPS = f"{PREFIX}:sweeps"
JOBS = f"{PREFIX}:jobs"
INSTANCES = f"{PREFIX}:instances"
LIVE_INSTANCES = f"{PREFIX}:instances:live"
