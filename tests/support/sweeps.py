"""Sweep files for tests: the tiny LM and synthetic corpus every end-to-end job trains on, a
base job that trains in seconds on the CPU, and sweep files built from it."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import yaml


def tiny_job(assets: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    """A base job that trains in seconds on the tiny LM (CPU)."""
    job: dict[str, Any] = {
        "model": str(assets["model"]),
        "layer": 1,
        "dataset": str(assets["corpus"]),
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
    for path, value in overrides.items():
        node = job
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return job


def write_sweep(
    directory: Path,
    assets: dict[str, Path],
    grid: dict[str, list[Any]] | None = None,
    name: str = "e2e",
    provider: dict[str, Any] | None = None,
    **job_overrides: Any,
) -> Path:
    spec = {
        "name": name,
        "provider": provider or {"name": "local"},
        "job": tiny_job(assets, **job_overrides),
        "grid": grid or {},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_assets(directory: Path) -> dict[str, Path]:
    """The tiny LM and a synthetic PII chat corpus, made once in `directory` however many
    processes (pytest-xdist workers) ask for them at the same time. The LM is trained on one
    thread, as `python -m sae make-tiny-lm` on one thread would: the same bytes every time."""
    # Imported here: torch loads only in the test processes that make the assets.
    import torch

    from sae.corpus import write_corpus
    from sae.tiny_lm import make_tiny_lm

    directory.mkdir(parents=True, exist_ok=True)
    model, corpus = directory / "tiny-lm", directory / "corpus.jsonl"
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model / "config.json").exists():
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                make_tiny_lm(model)
            finally:
                torch.set_num_threads(threads)
        if not corpus.exists():
            write_corpus(corpus, 400, 0)
    return {"model": model, "corpus": corpus}
