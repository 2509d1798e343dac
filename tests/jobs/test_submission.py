"""Submission checks through the CLI: the budget refusal, --force, and a drained-free enqueue
that writes the sweep and its jobs in one go, and a packed sweep's pack jobs beside the chord
(no workers needed)."""

from __future__ import annotations

from pathlib import Path

from queue_app.statemachine import JobState
from tests.e2e.harness import ControlPlane, control_messages
from tests.support.sweeps import write_sweep


def test_over_budget_is_refused_with_the_numbers_unless_forced(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    path = write_sweep(
        tmp_path,
        fleet_assets,
        grid={"sae.k": [4, 8]},
        provider={"name": "local", "price_per_hour": 500.0},
        **{"train.total_tokens": 50_000_000},
    )
    text = path.read_text().replace("name: e2e", "name: e2e\nbudget_usd: 1.0")
    path.write_text(text)

    refused = plane.run("sweep", "submit", str(path))
    assert refused.returncode == 2, refused.stderr
    assert "exceeds" in refused.stderr and "budget" in refused.stderr
    assert "--force" in refused.stderr
    assert plane.store.r.keys("sf:*") == []

    forced = plane.run("sweep", "submit", str(path), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    [sweep_id] = plane.store.sweep_ids()
    jobs = plane.store.sweep_jobs(sweep_id)
    assert [j.state for j in jobs] == [JobState.QUEUED] * 2
    assert [j.job_spec.overrides for j in jobs] == [{"sae.k": 4}, {"sae.k": 8}]


def test_missing_local_model_fails_preflight(plane: ControlPlane, tmp_path: Path) -> None:
    assets = {"model": tmp_path / "nope", "corpus": tmp_path / "corpus.jsonl"}
    assets["corpus"].write_text('{"text": "hello"}\n')
    result = plane.run("sweep", "submit", str(write_sweep(tmp_path, assets)))
    assert result.returncode == 2
    assert "FAILED" in result.stderr and str(tmp_path / "nope") in result.stderr
    assert plane.store.r.keys("sf:*") == []


def test_an_unusable_store_url_is_refused_before_anything_runs(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.env["SAEFLEET_STORE_URL"] = "gs://bucket/sweeps"
    result = plane.run("sweep", "submit", str(write_sweep(tmp_path, fleet_assets)))
    assert result.returncode == 2, result.stderr
    assert "SAEFLEET_STORE_URL" in result.stderr and "unknown scheme 'gs'" in result.stderr
    assert plane.store.r.keys("sf:*") == []


def test_a_packed_sweep_sends_each_packs_chain_and_a_follower_per_member(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    path = write_sweep(tmp_path, fleet_assets, grid={"sae.k": [4, 8, 16]}, max_pack_size=2)
    submitted = plane.run("sweep", "submit", str(path), "--json")
    assert submitted.returncode == 0, submitted.stderr

    [sweep_id] = plane.store.sweep_ids()
    sweep = plane.store.sweep(sweep_id)
    assert sweep.pack_ids == [f"{sweep_id}-p000"]
    pack = plane.store.job(sweep.pack_ids[0])
    assert pack.members == sweep.job_ids[:2] and pack.state is JobState.QUEUED
    jobs = plane.store.sweep_jobs(sweep_id)
    assert [j.pack_id for j in jobs] == [pack.job_id, pack.job_id, None]
    messages = control_messages(plane.store.r)

    def sent(task: str) -> list[str]:
        """The jobs that a message of `task` was sent for."""
        ids = [pack.job_id, *sweep.job_ids]
        return sorted(i for m in messages if f'"task": "{task}"' in m for i in ids if i in m)

    assert sent("saefleet.stage.provision") == sorted([pack.job_id, sweep.job_ids[2]])
    assert sent("saefleet.pack.follow") == sweep.job_ids[:2]
