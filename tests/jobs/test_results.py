"""Typed results: a job's result from its records, the sweep summary built from them, and
summary.json's JSON Schema checked in under docs/ (fakeredis, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from jobs.results import JobResult, SweepSummary, build_summary, job_result, summary_schema_text
from queue_app.connection import get_store
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import add_instance, make_sweep

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "summary.schema.json"
S = JobState


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True))


def test_the_checked_in_schema_matches_the_model() -> None:
    assert SCHEMA_PATH.read_text() == summary_schema_text(), (
        "SweepSummary changed: regenerate with `python -m jobs.results > docs/summary.schema.json`"
        " (and raise schema_version when a reader of the old layout would break)"
    )


def test_a_job_result_comes_from_the_records_and_crosses_the_broker_as_json(store: Store) -> None:
    [job] = make_sweep(store, "sw1", [S.SUCCEEDED], now=10_000.0)
    add_instance(store, job, "i-1", price_per_hour=2.0, hours=0.5, terminated=True, now=10_000.0)

    result = job_result(store, job.job_id)

    assert (result.state, result.cost_usd, result.instance_hours) == (S.SUCCEEDED, 1.0, 0.5)
    assert result.overrides == {"sae.k": 8}
    message = json.loads(json.dumps(result.model_dump(mode="json")))
    assert JobResult.model_validate(message) == result


def test_the_summary_picks_the_lowest_fvu_of_the_succeeded_jobs(store: Store) -> None:
    jobs = make_sweep(store, "sw1", [S.SUCCEEDED, S.SUCCEEDED, S.FAILED])
    for job, fvu in zip(jobs, (0.2, 0.1, 0.01), strict=True):
        store.r.hset(f"sf:job:{job.job_id}", "metrics", json.dumps({"fvu": fvu}))
    results = [job_result(store, j.job_id) for j in jobs]

    summary = build_summary("sw1", "sweep", results)

    assert summary.best is not None and summary.best.job_id == jobs[1].job_id
    assert summary.states == {"SUCCEEDED": 2, "FAILED": 1}
    assert summary.schema_version == 1
    assert summary.line().startswith("1 FAILED, 2 SUCCEEDED; best sae.k=16 (fvu 0.1)")


def test_a_summary_written_before_versioning_still_reads() -> None:
    old = {
        "sweep_id": "sw1",
        "name": "sweep",
        "finished_at": 1.0,
        "jobs": [],
        "states": {"FAILED": 2},
        "best": None,
        "cost_usd": 0.5,
        "instance_hours": 0.25,
        "preemptions": 1,
        "tokens_saved_by_early_stopping": 0,
    }
    summary = SweepSummary.model_validate_json(json.dumps(old))
    assert summary.schema_version == 1
    assert summary.line() == "2 FAILED; no best; $0.50, 0.25 instance-hours, 1 preemptions"


def test_finalize_writes_summary_json_from_the_model(settings: Settings) -> None:
    from jobs.sweep_tasks import finalize_sweep

    live = get_store(settings)
    [job] = make_sweep(live, "sw1", [S.FAILED])
    message = job_result(live, job.job_id).model_dump(mode="json")

    finalize_sweep([message], "sw1")

    path = Path(live.sweep("sw1").summary_path or "")
    written = json.loads(path.read_text())
    assert written["schema_version"] == 1 and written["states"] == {"FAILED": 1}
    assert SweepSummary.model_validate(written).jobs == [JobResult.model_validate(message)]
