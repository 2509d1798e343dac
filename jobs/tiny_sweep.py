"""The tiny sweep: jobs that train in seconds on a CPU, on the tiny LM and synthetic PII corpus
that `python -m sae make-tiny-lm` and `make-corpus` write. It is the one spec that the demo, the
queue and watchdog benchmarks and the tests start from; each changes what it needs by dotted
path (`{"train.total_tokens": 65_536}`), as a sweep file's grid does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from jobs.spec import set_path

TINY_JOB: dict[str, Any] = {
    "layer": 1,
    "context_len": 64,
    "sae": {"n_latents": 256, "k": 8, "aux_k": 32},
    "train": {
        "total_tokens": 16_384,
        "batch_tokens": 512,
        "lr": 1e-3,
        "warmup_steps": 4,
        "dtype": "fp32",
    },
    "early_stop": {"enabled": False, "val_tokens": 1024},
    "evals": {"holdout_tokens": 2048},
    "segment_minutes": 0.05,
    "gpu": {"require_gpu": False},
}
"""The base job, less its model and dataset."""


def tiny_job(model: str | Path, dataset: str | Path, **overrides: Any) -> dict[str, Any]:
    """The tiny job on `model` and `dataset` with `overrides` (dotted paths) applied."""
    job = {"model": str(model), "dataset": str(dataset), **copy.deepcopy(TINY_JOB)}
    for path, value in overrides.items():
        set_path(job, path, value)
    return job


def tiny_sweep(
    model: str | Path,
    dataset: str | Path,
    *,
    name: str = "tiny",
    provider: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    max_pack_size: int = 1,
    **job_overrides: Any,
) -> dict[str, Any]:
    """A sweep file's content: the tiny job (with `job_overrides`) on the local provider unless
    `provider` says otherwise, over `grid`, one job per instance unless `max_pack_size` packs
    them (the demo, benchmarks and scenarios measure one job per instance)."""
    return {
        "name": name,
        "provider": provider or {"name": "local"},
        "max_pack_size": max_pack_size,
        "job": tiny_job(model, dataset, **job_overrides),
        "grid": grid or {},
    }
