"""`PackMember`: one SAE of a pack with everything that is its own: run directory, trainer,
early stopper, history, validation losses, checkpoints, final artifacts and its failure.

The pack (sae.pack) feeds it batches; a member never sees the LM stream itself. A member's
checkpoint holds the stream position of its own step, so members restore independently.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.activations import HeldOut, StreamState
from sae.artifacts import write_final
from sae.checkpoint import STATE, latest_valid_checkpoint, prune_checkpoints, write_checkpoint
from sae.config import RunConfig
from sae.early_stop import PlateauStopper
from sae.errors import ConfigError, TrainingDiverged
from sae.evals import evaluate_sae
from sae.lm import LoadedLM
from sae.trainer import SAETrainer

HISTORY_POINTS = 500
"""Most training-loss points kept in a run's history."""


class PackMember:
    """One SAE trained from a shared activation stream, in its own `run_dir`."""

    def __init__(self, config: RunConfig, run_dir: Path, lm: LoadedLM) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        lm.check_layer(config.layer)
        d_sae = config.sae.d_sae(lm.d_model)
        if config.sae.kind == "topk" and config.sae.k > d_sae:
            raise ConfigError(
                f"sae.k ({config.sae.k}) must not exceed d_sae "
                f"({d_sae} = sae.expansion_factor x d_in {lm.d_model})"
            )
        self.trainer = SAETrainer(config.sae, config.train, lm.d_model, lm.device)
        self.stopper = PlateauStopper(config.early_stop)
        self.history: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []
        self.early_stopped = False
        self.last_stats: dict[str, float] = {}
        self.error: Exception | None = None
        """What failed this member (its own exception, or TrainingDiverged on a NaN loss)."""
        self.checkpoint: Path | None = None
        """The newest checkpoint of this member on disk (None: none written or restored)."""
        self._checkpointed_step = -1

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"

    @property
    def step(self) -> int:
        return self.trainer.step_count

    @property
    def done(self) -> bool:
        """Finished: early-stopped or its token budget reached."""
        return self.early_stopped or self.trainer.tokens >= self.config.train.total_tokens

    @property
    def active(self) -> bool:
        """Still takes steps: neither done nor failed."""
        return not self.done and self.error is None

    def restore(self, val_acts: Tensor) -> tuple[StreamState | None, Tensor | None]:
        """Load the newest checkpoint that verifies (or initialise from `val_acts`); return the
        stream position and torch RNG state it was taken at (None, None: a fresh start)."""
        checkpoint = latest_valid_checkpoint(self.checkpoints_dir)
        if checkpoint is None:
            self.trainer.init_from_data(val_acts)
            return None, None
        state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
        self.trainer.load_state_dict(state["trainer"])
        self.stopper.load_state_dict(state["stopper"])
        self.history = list(state["history"])
        self.validation = list(state["validation"])
        self.early_stopped = bool(state["early_stopped"])
        self.last_stats = dict(self.history[-1]) if self.history else {}
        self.checkpoint, self._checkpointed_step = checkpoint, self.step
        return StreamState.from_dict(state["stream"]), state["rng"]["torch"]

    def train_step(self, batch: Tensor, val_acts: Tensor) -> None:
        """One optimiser step on `batch`; a NaN loss fails this member (TrainingDiverged)."""
        stats = self.trainer.step(batch)
        if not math.isfinite(stats.loss):
            raise TrainingDiverged(
                f"loss is {stats.loss} at step {self.step}: lower train.lr or raise "
                "train.max_grad_norm's clipping (the newest checkpoint is kept)"
            )
        self.last_stats = stats.as_dict()
        tokens, step, train = self.trainer.tokens, self.step, self.config.train
        if step % max(1, train.total_steps // HISTORY_POINTS) == 0 or step == 1:
            self.history.append({"step": step, "tokens": tokens, **self.last_stats})
        every = self.config.early_stop.eval_every_tokens
        if tokens // every > (tokens - train.batch_tokens) // every:
            val = self.trainer.evaluate(val_acts)
            self.validation.append({"step": step, "tokens": tokens, **val})
            self.early_stopped = self.stopper.update(tokens, val["fvu"])

    def write_checkpoint(self, stream: StreamState) -> Path:
        """Checkpoint at `stream` (the position after this member's last step), unless the
        newest checkpoint already holds this step."""
        if self.checkpoint is not None and self._checkpointed_step == self.step:
            return self.checkpoint
        state = {
            "trainer": self.trainer.state_dict(),
            "stream": stream.as_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "validation": self.validation,
            "early_stopped": self.early_stopped,
            "rng": {"torch": torch.get_rng_state()},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.checkpoint = write_checkpoint(
            self.checkpoints_dir,
            self.step,
            self.trainer.tokens,
            buffer.getvalue(),
            self.config.model_dump_json(indent=2),
        )
        self._checkpointed_step = self.step
        prune_checkpoints(self.checkpoints_dir, self.config.train.keep_checkpoints)
        return self.checkpoint

    def snapshot(self, tokens_per_s: float, elapsed_s: float) -> dict[str, Any]:
        """Progress numbers (loss etc. are None before the run's first step)."""
        last = self.last_stats
        return {
            "step": self.step,
            "tokens": self.trainer.tokens,
            "total_tokens": self.config.train.total_tokens,
            "loss": last.get("loss"),
            "fvu": last.get("fvu"),
            "l0": last.get("l0"),
            "dead_fraction": last.get("dead_fraction"),
            "lr": last.get("lr"),
            "tokens_per_s": tokens_per_s,
            "elapsed_s": elapsed_s,
        }

    def finalize(self, lm: LoadedLM, holdout: HeldOut, tokens_per_s: float) -> dict[str, Any]:
        """Run the evals and write final/ (once: later calls read it back)."""
        metrics_path = self.final_dir / "metrics.json"
        if metrics_path.exists():
            evals: dict[str, Any] = json.loads(metrics_path.read_text())["evals"]
            return evals
        cfg = self.config
        evals = evaluate_sae(
            self.trainer.sae,
            lm,
            cfg.layer,
            holdout.ids,
            holdout.labels,
            cfg.evals,
            cfg.train.lm_batch_size,
        )
        metrics = {
            "config": cfg.model_dump(mode="json"),
            "train": {
                "steps": self.step,
                "tokens": self.trainer.tokens,
                "total_tokens": cfg.train.total_tokens,
                "early_stopped": self.early_stopped,
                "tokens_saved": max(cfg.train.total_tokens - self.trainer.tokens, 0),
                "last_segment_tokens_per_s": tokens_per_s,
            },
            "evals": evals,
            "history": self.history,
            "validation": self.validation,
        }
        write_final(self.final_dir, self.trainer.sae, cfg, metrics)
        return evals
