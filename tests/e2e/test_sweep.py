"""Whole sweeps through the real system: CLI submit, Celery control worker, tunnel service,
local-provider instances (real sshd), GPU-side workers started over SSH, training on the tiny LM,
checkpoints pulled over SFTP, the chord's finalizer, and nothing left running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch

from jobs.checkpoints import verify_pulled_checkpoint
from queue_app.statemachine import InstanceState, JobState
from tests.e2e.harness import ControlPlane
from tests.support.sweeps import write_sweep

pytestmark = pytest.mark.slow

SUCCESS_PATH = [
    "QUEUED",
    "PROVISIONING",
    "BOOTING",
    "VERIFYING",
    "BOOTSTRAPPING",
    "TRAINING",
    "COLLECTING",
    "TERMINATING",
    "SUCCEEDED",
]


def test_sweep_of_three_trains_collects_and_finalizes_once(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.start_control()
    plane.start_tunnels()
    sweep_file = write_sweep(
        tmp_path,
        fleet_assets,
        grid={"sae.k": [4, 8, 16]},
        segment_minutes=0.01,  # 0.6 s segments: several per job, each checkpoint pulled
        **{"train.total_tokens": 49_152},
    )
    sweep_id = plane.submit(sweep_file)
    sweep = plane.wait_sweep(sweep_id, timeout_s=300)

    assert sweep.finalize_runs == 1
    jobs = plane.store.sweep_jobs(sweep_id)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3
    summary = json.loads(Path(sweep.summary_path or "").read_text())
    assert [r["overrides"]["sae.k"] for r in summary["jobs"]] == [4, 8, 16]  # header order
    assert summary["states"] == {"SUCCEEDED": 3}
    assert summary["best"]["metric"] == "fvu"
    for job in jobs:
        assert [e["to"] for e in plane.store.events(job.job_id)] == SUCCESS_PATH
        assert job.metrics["l0"] == pytest.approx(job.job_spec.config.sae.k)
        assert 0 < job.metrics["fvu"] < 1
        final = Path(job.artifacts_dir or "") / "final"
        weights = safetensors.torch.load_file(final / "sae.safetensors")
        assert weights and json.loads((final / "cfg.json").read_text())["d_sae"] == 256
        pulled = sorted((Path(job.artifacts_dir or "") / "checkpoints").iterdir())
        assert 1 <= len(pulled) <= 3  # train.keep_checkpoints (default 3) kept in the store too
        assert all(verify_pulled_checkpoint(p) for p in pulled)
        assert job.latest_checkpoint == pulled[-1].name
        [attempt] = plane.store.attempts(job.job_id)
        assert attempt.segment >= 2 and attempt.pulled_segment == attempt.segment
        assert (Path(job.artifacts_dir or "") / "logs" / "worker-a1.log").exists()
    instances = plane.store.instances()
    assert len(instances) == 3
    assert all(i.state is InstanceState.TERMINATED and i.terminated_at for i in instances)
    assert plane.running_instances() == []


def test_failing_stages_terminate_their_instances_and_the_sweep_still_finalizes(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.start_control()
    plane.start_tunnels()
    no_text = tmp_path / "no-text.jsonl"
    no_text.write_text('{"id": 1}\n{"id": 2}\n')
    sweep_file = write_sweep(
        tmp_path,
        fleet_assets,
        grid={"gpu.require_gpu": [True, False], "dataset": [str(no_text)]},
    )
    sweep_id = plane.submit(sweep_file)
    sweep = plane.wait_sweep(sweep_id, timeout_s=180)

    assert sweep.finalize_runs == 1
    no_gpu, bad_data = plane.store.sweep_jobs(sweep_id)
    assert no_gpu.state is JobState.FAILED and bad_data.state is JobState.FAILED
    assert no_gpu.reason and no_gpu.reason.startswith("verify_gpu: GPU check failed: nvidia-smi")
    assert bad_data.reason and "training segment 1 failed" in bad_data.reason
    assert "no text column found" in bad_data.reason
    summary = json.loads(Path(sweep.summary_path or "").read_text())
    assert summary["states"] == {"FAILED": 2} and summary["best"] is None
    assert all(i.state is InstanceState.TERMINATED for i in plane.store.instances())
    assert plane.running_instances() == []


def test_a_bad_sweep_file_enqueues_nothing(plane: ControlPlane, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\njob:\n  model: m\n  layer: -2\n  dataset: d\n"
        "  sae: {n_latents: 64, k: 8, aux_k: 16}\n  train: {total_tokens: 1000}\n"
    )
    result = plane.run("sweep", "submit", str(path))
    assert result.returncode == 2
    assert "job.layer: Input should be greater than or equal to 0 (got -2)" in result.stderr
    assert plane.store.r.keys("*") == []
