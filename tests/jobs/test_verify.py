"""The GPU checklist's verdicts on probe reports (the probe itself runs in the e2e tests)."""

from __future__ import annotations

from typing import Any

from jobs.verify import GPUReport
from queue_app.jobspec import JobConfig


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
