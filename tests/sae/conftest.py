"""Fixtures: the tiny LM (shared with the end-to-end tests) and a synthetic corpus, made once per
run by the package itself, and tiny run configs that train in seconds on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sae.config import RunConfig
from sae.corpus import write_corpus


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Any:
    """The tiny models gain nothing from a second thread, and OpenMP threads spinning on a busy
    2-core machine made runs 3-4x slower (measured); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(fleet_assets: dict[str, Path]) -> Path:
    """The tiny LM the end-to-end jobs train on too (made once per run)."""
    return fleet_assets["model"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", 600, 0)


def tiny_config(tiny_lm: Path, corpus: Path, **sections: dict[str, Any]) -> RunConfig:
    """A run of 16k tokens on the tiny LM (32 steps of 512), with `sections` merged in."""
    raw: dict[str, Any] = {
        "model": str(tiny_lm),
        "layer": 2,
        "dataset": str(corpus),
        "context_len": 64,
        "sae": {"n_latents": 256, "k": 8, "aux_k": 32, "dead_after_tokens": 2048},
        "train": {
            "total_tokens": 16384,
            "batch_tokens": 512,
            "lr": 2e-3,
            "warmup_steps": 4,
            "shuffle_buffer_tokens": 2048,
            "lm_batch_size": 16,
        },
        "early_stop": {"enabled": False, "eval_every_tokens": 4096, "val_tokens": 1024},
        "evals": {"holdout_tokens": 4096},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return RunConfig.model_validate(raw)


@pytest.fixture
def make_config(tiny_lm: Path, corpus: Path) -> Any:
    def make(**sections: Any) -> RunConfig:
        return tiny_config(tiny_lm, corpus, **sections)

    return make
