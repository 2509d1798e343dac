"""`TrainingRun`: the API the GPU-side worker calls. One run directory holds one SAE's training:

    run_dir/checkpoints/step-<10 digits>/   one per checkpoint (see sae.checkpoint)
    run_dir/final/                          sae.safetensors, cfg.json, metrics.json, plots

`train()` resumes from the newest checkpoint that verifies (or starts fresh), trains until the
token budget, an early stop, `max_seconds` or `should_stop()`, always checkpoints before it
returns, and writes final/ (with the evals) once training is finished. Calling it again continues
in the same process without reloading the LM or restarting the data stream.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from sae.activations import ActivationStream, StreamState, activations_of, take_holdout
from sae.artifacts import write_final
from sae.atomic_files import write_atomic
from sae.checkpoint import (
    STATE,
    latest_valid_checkpoint,
    prune_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)
from sae.config import RunConfig
from sae.early_stop import PlateauStopper
from sae.errors import ConfigError
from sae.evals import evaluate_sae
from sae.lm import load_lm
from sae.packing import valid_mask
from sae.trainer import SAETrainer, StepStats

__all__ = [
    "SegmentResult",
    "TrainingRun",
    "latest_valid_checkpoint",
    "run_config_of",
    "verify_checkpoint",
]

REPORT_INTERVAL_S = 2.0
"""Heartbeat and on_progress cadence (seconds, at most, between steps)."""
HISTORY_POINTS = 500


class SegmentResult(BaseModel):
    """What one `train()` call did (JSON-serialisable with model_dump)."""

    step: int
    tokens: int
    total_tokens: int
    done: bool
    """Training finished: token budget reached or early-stopped; final/ is written."""
    early_stopped: bool
    stopped: bool
    """should_stop() asked to stop."""
    checkpoint: str
    metrics: dict[str, Any]
    elapsed_s: float


def run_config_of(config: RunConfig) -> RunConfig:
    """The RunConfig part of a config that may be a subclass (the fleet's JobConfig)."""
    return RunConfig.model_validate(config.model_dump(include=set(RunConfig.model_fields)))


class _Reporter:
    """Throttled heartbeat file and progress callback."""

    def __init__(
        self, on_progress: Callable[[dict[str, Any]], None] | None, heartbeat_path: Path | None
    ) -> None:
        self.on_progress, self.heartbeat_path = on_progress, heartbeat_path
        self.last_beat = self.last_progress = -float("inf")
        self.snapshot: dict[str, Any] = {}

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.heartbeat_path is None or (not force and now - self.last_beat < REPORT_INTERVAL_S):
            return
        self.last_beat = now
        payload = {**self.snapshot, "time": time.time(), "pid": os.getpid()}
        write_atomic(self.heartbeat_path, json.dumps(payload), durable=False)

    def progress(self, snapshot: dict[str, Any], force: bool = False) -> None:
        self.snapshot = snapshot
        self.beat(force)
        now = time.monotonic()
        if self.on_progress is not None and (
            force or now - self.last_progress >= REPORT_INTERVAL_S
        ):
            self.last_progress = now
            self.on_progress(dict(snapshot))


class TrainingRun:
    """Trains one SAE in `run_dir`, segment by segment, resumably."""

    def __init__(self, config: RunConfig, run_dir: Path, *, device: str | None = None) -> None:
        self.config = run_config_of(config)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cfg = self.config
        self.lm = load_lm(
            cfg.model, device=self.device, lm_dtype=cfg.train.lm_dtype, token_env=cfg.hf_token_env
        )
        self.lm.check_layer(cfg.layer)
        d_sae = cfg.sae.d_sae(self.lm.d_model)
        if cfg.sae.kind == "topk" and cfg.sae.k > d_sae:
            raise ConfigError(
                f"sae.k ({cfg.sae.k}) must not exceed d_sae "
                f"({d_sae} = sae.expansion_factor x d_in {self.lm.d_model})"
            )
        self.holdout = take_holdout(cfg, self.lm)
        self.val_acts = activations_of(
            self.lm, cfg.layer, self._val_contexts(), cfg.train.lm_batch_size
        )
        self.trainer = SAETrainer(cfg.sae, cfg.train, self.lm.d_model, self.device)
        self.stopper = PlateauStopper(cfg.early_stop)
        self.history: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []
        self.early_stopped = False
        self.last_stats: dict[str, float] = {}
        stream_state = self._resume()
        self.stream = ActivationStream(cfg, self.lm, self.holdout.train_start, stream_state)

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"

    @property
    def done(self) -> bool:
        return self.early_stopped or self.trainer.tokens >= self.config.train.total_tokens

    def _val_contexts(self) -> torch.Tensor:
        ids = self.holdout.ids
        per_context = valid_mask(ids, self.lm.tokenizer).sum(1).cumsum(0)
        needed = int((per_context < self.config.early_stop.val_tokens).sum()) + 1
        return ids[:needed]

    def _resume(self) -> StreamState | None:
        checkpoint = latest_valid_checkpoint(self.checkpoints_dir)
        if checkpoint is None:
            self.trainer.init_from_data(self.val_acts)
            return None
        state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
        self.trainer.load_state_dict(state["trainer"])
        self.stopper.load_state_dict(state["stopper"])
        self.history = list(state["history"])
        self.validation = list(state["validation"])
        self.early_stopped = bool(state["early_stopped"])
        self.last_stats = dict(self.history[-1]) if self.history else {}
        torch.set_rng_state(state["rng"]["torch"])
        return StreamState.from_dict(state["stream"])

    def train(
        self,
        *,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        heartbeat_path: Path | None = None,
    ) -> SegmentResult:
        """Train one segment; see the module docstring."""
        started = time.monotonic()
        start_tokens = self.trainer.tokens
        reporter = _Reporter(on_progress, Path(heartbeat_path) if heartbeat_path else None)
        reporter.progress(self._snapshot(None, started, start_tokens), force=True)
        stopped = False
        last_checkpoint = (self.trainer.tokens, started)
        while not self.done:
            if should_stop is not None and should_stop():
                stopped = True
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            stats = self.trainer.step(self.stream.next_batch(tick=reporter.beat))
            self._after_step(stats)
            reporter.progress(self._snapshot(stats, started, start_tokens))
            if self._checkpoint_due(*last_checkpoint):
                self._write_checkpoint()
                last_checkpoint = (self.trainer.tokens, time.monotonic())
        checkpoint = self._write_checkpoint()
        segment_metrics: dict[str, Any] = self._snapshot(None, started, start_tokens)
        reporter.progress(segment_metrics, force=True)
        if self.done:
            segment_metrics["evals"] = self._finalize(segment_metrics["tokens_per_s"])
        return SegmentResult(
            step=self.trainer.step_count,
            tokens=self.trainer.tokens,
            total_tokens=self.config.train.total_tokens,
            done=self.done,
            early_stopped=self.early_stopped,
            stopped=stopped,
            checkpoint=str(checkpoint),
            metrics={k: v for k, v in segment_metrics.items() if k not in ("step", "tokens")},
            elapsed_s=time.monotonic() - started,
        )

    def _after_step(self, stats: StepStats) -> None:
        tokens, step = self.trainer.tokens, self.trainer.step_count
        every = max(1, self.config.train.total_steps // HISTORY_POINTS)
        if step % every == 0 or step == 1:
            self.history.append({"step": step, "tokens": tokens, **stats.as_dict()})
        eval_every = self.config.early_stop.eval_every_tokens
        if tokens // eval_every > (tokens - self.config.train.batch_tokens) // eval_every:
            val = self.trainer.evaluate(self.val_acts)
            self.validation.append({"step": step, "tokens": tokens, **val})
            self.early_stopped = self.stopper.update(tokens, val["fvu"])

    def _checkpoint_due(self, tokens_then: int, time_then: float) -> bool:
        train = self.config.train
        by_tokens = (
            train.checkpoint_every_tokens is not None
            and self.trainer.tokens - tokens_then >= train.checkpoint_every_tokens
        )
        by_time = (
            train.checkpoint_every_minutes is not None
            and time.monotonic() - time_then >= 60 * train.checkpoint_every_minutes
        )
        return (by_tokens or by_time) and not self.done

    def _snapshot(
        self, stats: StepStats | None, started: float, start_tokens: int
    ) -> dict[str, Any]:
        """Progress numbers (loss etc. are None before the run's first step)."""
        if stats is not None:
            self.last_stats = stats.as_dict()
        last = self.last_stats
        elapsed = max(time.monotonic() - started, 1e-9)
        return {
            "step": self.trainer.step_count,
            "tokens": self.trainer.tokens,
            "total_tokens": self.config.train.total_tokens,
            "loss": last.get("loss"),
            "fvu": last.get("fvu"),
            "l0": last.get("l0"),
            "dead_fraction": last.get("dead_fraction"),
            "lr": last.get("lr"),
            "tokens_per_s": (self.trainer.tokens - start_tokens) / elapsed,
            "elapsed_s": elapsed,
        }

    def _write_checkpoint(self) -> Path:
        state = {
            "trainer": self.trainer.state_dict(),
            "stream": self.stream.state_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "validation": self.validation,
            "early_stopped": self.early_stopped,
            "rng": {"torch": torch.get_rng_state()},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path = write_checkpoint(
            self.checkpoints_dir,
            self.trainer.step_count,
            self.trainer.tokens,
            buffer.getvalue(),
            self.config.model_dump_json(indent=2),
        )
        prune_checkpoints(self.checkpoints_dir, self.config.train.keep_checkpoints)
        return path

    def _finalize(self, tokens_per_s: float) -> dict[str, Any]:
        """Run the evals and write final/ (once: later calls read it back)."""
        metrics_path = self.final_dir / "metrics.json"
        if metrics_path.exists():
            evals: dict[str, Any] = json.loads(metrics_path.read_text())["evals"]
            return evals
        cfg = self.config
        evals = evaluate_sae(
            self.trainer.sae,
            self.lm,
            cfg.layer,
            self.holdout.ids,
            self.holdout.labels,
            cfg.evals,
            cfg.train.lm_batch_size,
        )
        metrics = {
            "config": cfg.model_dump(mode="json"),
            "train": {
                "steps": self.trainer.step_count,
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
