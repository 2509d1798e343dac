"""Sweep files for tests: the tiny LM and synthetic corpus every end-to-end job trains on, and
sweep files of the tiny job (jobs.tiny_sweep) on them."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import yaml

from jobs.tiny_sweep import tiny_sweep


def write_sweep(
    directory: Path,
    assets: dict[str, Path],
    grid: dict[str, list[Any]] | None = None,
    name: str = "e2e",
    provider: dict[str, Any] | None = None,
    **job_overrides: Any,
) -> Path:
    """The tiny sweep on the test assets, as a sweep file."""
    spec = tiny_sweep(
        assets["model"], assets["corpus"], name=name, provider=provider, grid=grid, **job_overrides
    )
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
