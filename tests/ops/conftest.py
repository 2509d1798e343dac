"""Fixtures of the ops tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.tiny_sweep import tiny_sweep
from queue_app.settings import Settings


@pytest.fixture
def base(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """A sweep that `sweep submit` accepts (its model and data exist for the preflight)."""
    model, data = tmp_path / "model", tmp_path / "data.jsonl"
    model.mkdir()
    data.write_text('{"text": "hello"}\n')
    return tiny_sweep(model, data, name="fuzz", grid={"sae.k": [4, 8]})


@pytest.fixture
def sweep_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "sweep.yaml"
