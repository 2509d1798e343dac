"""The GPU checklist's verdicts on probe reports, the probe itself with and without a GPU, and
stage `verify_gpu` over fake SSH: a pass, an unreachable instance retried, a failed check that
fails the job and terminates the instance, and a duplicate that runs no probe."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobs.providers import InstanceStatus
from jobs.ssh import CommandResult
from jobs.stage_base import backoff
from jobs.stages import verify_gpu
from jobs.verify import PROBE, GPUReport
from queue_app.jobspec import JobConfig
from queue_app.records import InstanceRecord
from queue_app.statemachine import InstanceState, JobState
from tests.jobs.stage_world import StageWorld


def config(**gpu: Any) -> JobConfig:
    return JobConfig.model_validate(
        {
            "model": "m",
            "layer": 1,
            "dataset": "d",
            "sae": {"n_latents": 64, "k": 8, "aux_k": 16},
            "train": {"total_tokens": 1024, "batch_tokens": 512, "shuffle_buffer_tokens": 1024},
            "gpu": gpu,
        }
    )


A100 = {
    "nvidia_smi": {"rc": 0, "out": "NVIDIA A100-SXM4-40GB, 40960, 40000\n", "err": ""},
    "torch": "2.5.1+cu121",
    "cuda": "12.1",
    "cuda_available": True,
}


def test_a100_passes_for_a_38gb_job() -> None:
    report = GPUReport(A100)
    assert report.failures(config(min_vram_gb=38)) == []
    assert "A100" in report.summary() and "torch 2.5.1" in report.summary()


def test_each_failed_check_is_named() -> None:
    assert GPUReport(A100).failures(config(min_vram_gb=60)) == [
        "free VRAM: 39.1 GB < job.gpu.min_vram_gb 60.0 GB"
    ]
    old_torch = {**A100, "torch": "2.0.1", "cuda_available": False}
    assert GPUReport(old_torch).failures(config()) == [
        "torch version: 2.0.1 < 2.5",
        "torch.cuda.is_available(): False (torch 2.0.1, CUDA 12.1)",
    ]
    broken_driver = {**A100, "nvidia_smi": {"rc": 9, "out": "", "err": "NVML: driver mismatch"}}
    assert (
        GPUReport(broken_driver).failures(config())[0]
        == "nvidia-smi: exit 9: NVML: driver mismatch"
    )
    assert GPUReport(A100).failures(config(count=2)) == ["GPU count: 1 < job.gpu.count 2"]


def test_no_gpu_fails_unless_the_job_allows_cpu() -> None:
    cpu_only = {"torch": "2.13.0+cpu", "cuda": None, "cuda_available": False}
    [first, *_] = GPUReport(cpu_only).failures(config())
    assert first.startswith("nvidia-smi: not found") and "require_gpu: false" in first
    assert GPUReport(cpu_only).failures(config(require_gpu=False)) == []
    assert GPUReport({"torch_error": "ModuleNotFoundError"}).failures(
        config(require_gpu=False)
    ) == ["torch: cannot import (ModuleNotFoundError)"]


CPU_PROBE = {"python": "3.11.2", "torch": "2.6.0+cpu", "cuda": None, "cuda_available": False}


def _verifying(world: StageWorld) -> tuple[str, InstanceRecord]:
    job_id = world.sweep()
    return job_id, world.launch(job_id, JobState.VERIFYING)


def _probe_answers(world: StageWorld, probe: dict[str, Any]) -> None:
    world.ssh.answer("import json, shutil", CommandResult(0, json.dumps(probe) + "\n", ""))


def test_verify_records_the_gpu_and_moves_on_to_bootstrap(stage_world: StageWorld) -> None:
    job_id, instance = _verifying(stage_world)
    _probe_answers(stage_world, CPU_PROBE)
    delivery = stage_world.deliver(verify_gpu, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.job(job_id).state is JobState.BOOTSTRAPPING
    assert "torch 2.6.0+cpu" in (stage_world.attempt(job_id).gpu or "")
    assert len(stage_world.ssh.commands[instance.instance_id]) == 1


def test_an_unreachable_instance_is_retried_with_backoff(stage_world: StageWorld) -> None:
    job_id, instance = _verifying(stage_world)
    _probe_answers(stage_world, CPU_PROBE)
    stage_world.ssh.down.add(instance.instance_id)
    delivery = stage_world.deliver(verify_gpu, job_id)
    assert (delivery.state, delivery.countdown) == ("RETRY", backoff(1))
    assert stage_world.job(job_id).state is JobState.VERIFYING
    stage_world.ssh.down.clear()
    assert stage_world.deliver(verify_gpu, job_id).state == "SUCCESS"
    assert stage_world.job(job_id).state is JobState.BOOTSTRAPPING


def test_an_unreachable_instance_the_provider_lost_is_a_preemption(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _verifying(stage_world)
    stage_world.ssh.down.add(instance.instance_id)
    stage_world.provider.set_status(instance.instance_id, InstanceStatus.PREEMPTED)
    delivery = stage_world.deliver(verify_gpu, job_id)
    assert delivery.state == "IGNORED" and delivery.replacement is not None
    assert stage_world.job(job_id).state is JobState.PREEMPTED


def test_a_failed_check_fails_the_job_and_terminates_the_instance(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _verifying(stage_world)
    _probe_answers(stage_world, {**CPU_PROBE, "torch": "2.1.0"})
    delivery = stage_world.deliver(verify_gpu, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.failure(job_id, instance) == (
        "verify_gpu: GPU check failed: torch version: 2.1.0 < 2.5"
    )
    assert stage_world.instance(instance.instance_id).state is InstanceState.TERMINATING


def test_a_duplicate_verify_runs_no_probe(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    instance = stage_world.launch(job_id, JobState.BOOTSTRAPPING)
    delivery = stage_world.deliver(verify_gpu, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.ssh.commands[instance.instance_id] == []
    assert stage_world.job(job_id).state is JobState.BOOTSTRAPPING


def _run_probe(path: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_the_probe_reads_torch_from_its_metadata_where_there_is_no_gpu() -> None:
    report = _run_probe(os.path.dirname(sys.executable))
    assert "nvidia_smi" not in report and "cuda_available" not in report
    assert report["torch"] == importlib.metadata.version("torch")
    assert GPUReport(report).failures(config(require_gpu=False)) == []


def test_the_probe_asks_torch_for_cuda_where_nvidia_smi_finds_a_gpu(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA A100-SXM4-40GB, 40960, 40000'\n")
    smi.chmod(0o755)
    report = _run_probe(f"{tmp_path}:{os.path.dirname(sys.executable)}")
    assert report["nvidia_smi"]["rc"] == 0
    assert report["cuda_available"] is False and report["torch"].startswith("2.")
    failures = GPUReport(report).failures(config(require_gpu=True))
    assert failures == [
        f"torch.cuda.is_available(): False (torch {report['torch']}, CUDA {report['cuda']})"
    ]
