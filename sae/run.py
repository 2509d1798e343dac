"""`TrainingRun`: the API the GPU-side worker calls. One run directory holds one SAE's training:

    run_dir/checkpoints/step-<10 digits>/   one per checkpoint (see sae.checkpoint)
    run_dir/final/                          sae.safetensors, cfg.json, metrics.json, plots

`train()` resumes from the newest checkpoint that verifies (or starts fresh), trains until the
token budget, an early stop, `max_seconds` or `should_stop()`, always checkpoints before it
returns, and writes final/ (with the evals) once training is finished. Calling it again continues
in the same process without reloading the LM or restarting the data stream.

A single run is a pack of one (sae.pack): the same loop, checkpoints and out-of-memory recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from sae.checkpoint import latest_valid_checkpoint, verify_checkpoint
from sae.config import RunConfig
from sae.lm import LoadedLM
from sae.oom import InjectedOOM
from sae.pack import PackRun, SegmentResult, run_config_of
from sae.trainer import SAETrainer

__all__ = [
    "SegmentResult",
    "TrainingRun",
    "latest_valid_checkpoint",
    "run_config_of",
    "verify_checkpoint",
]


class TrainingRun:
    """Trains one SAE in `run_dir`, segment by segment, resumably."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        *,
        device: str | None = None,
        inject_oom: InjectedOOM | None = None,
    ) -> None:
        self.pack = PackRun([config], [Path(run_dir)], device=device, inject_oom=inject_oom)

    @property
    def config(self) -> RunConfig:
        return self.pack.members[0].config

    @property
    def run_dir(self) -> Path:
        return self.pack.members[0].run_dir

    @property
    def lm(self) -> LoadedLM:
        return self.pack.lm

    @property
    def trainer(self) -> SAETrainer:
        return self.pack.members[0].trainer

    @property
    def val_acts(self) -> Tensor:
        return self.pack.val_acts[self.config.layer]

    @property
    def done(self) -> bool:
        return self.pack.members[0].done

    def restore(self) -> None:
        """Load the newest checkpoint in the run directory again (one placed there after this
        run was built: the LM stays loaded)."""
        self.pack.restore()

    def train(
        self,
        *,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        heartbeat_path: Path | None = None,
        on_oom: Callable[[dict[str, Any]], None] | None = None,
    ) -> SegmentResult:
        """Train one segment; see the module docstring. Raises what failed the SAE."""

        def report(snapshot: dict[str, Any]) -> None:
            if on_progress is not None:
                on_progress(snapshot["members"][0])

        result = self.pack.train(
            max_seconds=max_seconds,
            should_stop=should_stop,
            on_progress=report,
            heartbeat_path=heartbeat_path,
            on_oom=on_oom,
        )
        error = self.pack.members[0].error
        if error is not None:
            raise error
        return result.members[0]
