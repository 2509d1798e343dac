"""Records: a job's spec stored as the fields a user set and read back typed, records written
before still reading, every field documented (fakeredis, fast)."""

from __future__ import annotations

import json

import fakeredis
import pytest

from jobs.spec import parse_sweep_text
from jobs.submission import job_records
from queue_app.jobspec import ProviderSpec
from queue_app.records import AttemptRecord, InstanceRecord, JobRecord, SweepRecord
from queue_app.store import Store

SWEEP = """
name: k-sweep
provider: {name: %s}
job:
  model: tiny-lm
  layer: 1
  dataset: corpus.jsonl
  sae: {n_latents: 256}
  train: {total_tokens: 4096}
grid:
  sae.k: [4, 8]
"""


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True))


def stored_and_read(store: Store, provider: str) -> list[JobRecord]:
    specs = parse_sweep_text(SWEEP % provider).expand()
    records = job_records("sw1", specs, now=1.0)
    sweep = SweepRecord(sweep_id="sw1", name="k", created_at=1.0, spec={}, job_ids=[])
    store.create_sweep(sweep, records)
    read = store.sweep_jobs("sw1")
    assert [r.job_spec for r in read] == specs
    return read


@pytest.mark.parametrize("provider", ["local", "lambda"])
def test_a_job_spec_reads_back_typed(store: Store, provider: str) -> None:
    job = stored_and_read(store, provider)[1]
    assert job.job_spec.config.sae.k == 8 and job.job_spec.overrides == {"sae.k": 8}
    assert job.job_spec.provider.name == provider


def test_the_stored_spec_keeps_only_the_fields_a_user_set(store: Store) -> None:
    stored_and_read(store, "local")
    raw = json.loads(store.r.hget("sf:job:sw1-0000", "spec") or "")
    assert raw["config"]["sae"] == {"n_latents": 256, "k": 4}
    assert raw["provider"] == {"name": "local"}


def test_a_job_written_before_still_reads(store: Store) -> None:
    """Submit used to store the provider with every default."""
    job = stored_and_read(store, "local")[0]
    full = ProviderSpec().model_dump(mode="json")
    store.r.hset("sf:job:sw1-0000", "spec", json.dumps({**job.spec, "provider": full}))
    assert store.job("sw1-0000").job_spec == job.job_spec


@pytest.mark.parametrize("record", [SweepRecord, JobRecord, AttemptRecord, InstanceRecord])
def test_every_field_is_documented(record: type[SweepRecord]) -> None:
    assert [n for n, f in record.model_fields.items() if not f.description] == []
