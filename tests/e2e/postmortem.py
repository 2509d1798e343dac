"""What an end-to-end test that failed leaves in its report: the store's account of every job,
attempt and instance, what waits in Redis, and the tail of every service's and instance's log,
read while the control plane still runs (before the fixture's teardown stops it). A scenario
that failed once in CI can then be read rather than guessed at."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path

import pytest

from queue_app.records import JobRecord
from tests.e2e.harness import ControlPlane

LOG_TAIL_LINES = 25
LINE_CHARS = 300


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    plane = getattr(item, "funcargs", {}).get("plane")
    if report.when == "call" and report.failed and isinstance(plane, ControlPlane):
        report.sections.append(("control plane at the failure", digest(plane)))
    return report


def digest(plane: ControlPlane) -> str:
    """Store, queues and log tails of `plane`, as text (whatever cannot be read is said so)."""
    parts = []
    for title, read in (("store", _store_state), ("redis", _queues), ("logs", _log_tails)):
        try:
            parts.append(f"--- {title}\n{read(plane)}")
        except Exception as exc:  # a diagnosis that fails must never hide the test's failure
            parts.append(f"--- {title}: unreadable ({type(exc).__name__}: {exc})")
    return "\n".join(parts)


def _store_state(plane: ControlPlane) -> str:
    store, now = plane.store, time.time()
    lines = [_job_line(plane, job, now) for job in store.jobs(store.job_ids())]
    for instance in store.instances():
        lines.append(
            f"instance {instance.instance_id}: {instance.state} job={instance.job_id} "
            f"broker_port={instance.broker_port}"
        )
    return "\n".join(lines)


def _job_line(plane: ControlPlane, job: JobRecord, now: float) -> str:
    line = (
        f"job {job.job_id}: {job.state} attempt={job.attempt} "
        f"step={job.progress.get('step')} reason={job.reason!r}"
    )
    if not job.attempt:
        return line
    a = plane.store.attempt(job.job_id, job.attempt)
    ages = {
        "sent": a.segment_sent_at,
        "started": a.segment_started_at,
        "finished": a.segment_finished_at,
    }
    since = " ".join(f"{k}={now - v:.0f}s ago" for k, v in ages.items() if v)
    return (
        f"{line}\n  attempt {a.attempt} on {a.instance_id}: segment {a.segment} "
        f"{a.segment_status} pulled={a.pulled_segment} {since}"
    )


def _queues(plane: ControlPlane) -> str:
    r = plane.store.r
    lines = [f"list {key}: {r.llen(key)}" for key in sorted(r.scan_iter()) if r.type(key) == "list"]
    lines.append(f"unacked: {r.hlen('unacked')}")
    return "\n".join(lines)


def _log_tails(plane: ControlPlane) -> str:
    logs = sorted((plane.home / "logs").glob("*.log"))
    logs += sorted(plane.settings.local_instances_dir.glob("*/home/logs/worker.log"))
    return "\n".join(_tail(path, plane.home) for path in logs)


def _tail(path: Path, home: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    body = "\n".join(f"  {line[:LINE_CHARS]}" for line in lines)
    return f"{path.relative_to(home)}:\n{body}"
