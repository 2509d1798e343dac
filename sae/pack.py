"""`PackRun`: several SAEs trained from one activation stream. Each batch costs one LM forward
(hooking every member's layer, stopped after the deepest), then every active member takes its
own optimiser step on it. A single run is a pack of one (sae.run).

- Members keep their own run directory, metrics, checkpoints and final artifacts (sae.member).
- Early stop: a member that stops writes its checkpoint and final/ at once and drops out; the
  pack goes on for the rest. A failing member (NaN loss, its own exception) fails alone.
- Checkpoints: the pack checkpoints every member at the same stream position. On restore each
  member loads its own newest checkpoint that verifies; the stream restarts at the earliest
  active member's position and members that are ahead skip the batches they already trained
  on, so a member whose newest checkpoint was corrupt catches up alone, bit-identically.
- Out of memory: every member restores its newest checkpoint and retries with half the LM
  forward's batch (an out-of-memory in the forward, while it is above 1 context) or else half
  the micro-batch and twice the accumulation (the same effective batch; sae.oom); `on_oom`
  hears of each halving at once (the fleet keeps it for later segments and attempts).
  OutOfMemory once the micro-batch cannot be halved: it must divide train.batch_tokens for
  the effective batch to stay exact, so a power-of-two batch halves down to 1 token.
  `inject_oom` (tests) raises torch.OutOfMemoryError at a chosen step.
- `nan_at` (tests) feeds member i NaN activations once it has taken n steps ({i: n}): its
  loss is NaN (reported at step n + 1) and it fails alone, as on a real divergence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from sae.activations import ActivationStream, activations_of, take_holdout
from sae.config import RunConfig
from sae.errors import ConfigError
from sae.lm import load_lm
from sae.member import PackMember
from sae.oom import ForwardOutOfMemory, InjectedOOM, halve_for
from sae.pack_rules import check_packable
from sae.packing import valid_mask
from sae.progress import ProgressReporter

log = logging.getLogger(__name__)


class SegmentResult(BaseModel):
    """What one `train()` call did for one SAE (JSON-serialisable with model_dump)."""

    step: int
    tokens: int
    total_tokens: int
    done: bool
    """Training finished: token budget reached or early-stopped; final/ is written."""
    early_stopped: bool
    stopped: bool
    """should_stop() asked to stop."""
    checkpoint: str
    """The newest checkpoint ("" only for a member that failed before its first one)."""
    metrics: dict[str, Any]
    elapsed_s: float
    error: str | None = None
    """Why this SAE failed (it takes no more steps); None while it is healthy."""


class PackResult(BaseModel):
    """What one `PackRun.train()` call did."""

    members: list[SegmentResult]
    position: int
    """Batches of the stream served (the step of every member in step with the stream)."""
    oom_restarts: list[dict[str, Any]]
    """One entry per out-of-memory recovery in this process: step and new accumulation."""
    elapsed_s: float


def run_config_of(config: RunConfig) -> RunConfig:
    """The RunConfig part of a config that may be a subclass (the fleet's JobConfig)."""
    return RunConfig.model_validate(config.model_dump(include=set(RunConfig.model_fields)))


class PackRun:
    """Trains the SAEs of `configs`, member i in `run_dirs[i]`, from one activation stream."""

    def __init__(
        self,
        configs: Sequence[RunConfig],
        run_dirs: Sequence[Path],
        *,
        device: str | None = None,
        inject_oom: InjectedOOM | None = None,
        nan_at: Mapping[int, int] | None = None,
    ) -> None:
        self.configs = [run_config_of(config) for config in configs]
        check_packable(self.configs)
        self.run_dirs = [Path(run_dir) for run_dir in run_dirs]
        if len(self.run_dirs) != len(self.configs) or len(set(self.run_dirs)) < len(configs):
            raise ConfigError("a pack needs one distinct run directory per member")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        first = self.configs[0]
        self.lm = load_lm(
            first.model,
            device=self.device,
            lm_dtype=first.train.lm_dtype,
            token_env=first.hf_token_env,
        )
        self.layers = sorted({config.layer for config in self.configs})
        for layer in self.layers:
            self.lm.check_layer(layer)
        self.holdout = take_holdout(first, self.lm)
        self.val_acts = activations_of(
            self.lm, self.layers, self._val_contexts(), first.train.lm_batch_size
        )
        self.oom_restarts: list[dict[str, Any]] = []
        self._inject_oom = inject_oom
        self._nan_at = dict(nan_at or {})
        self.restore()
        self._segment_start = (time.monotonic(), [m.trainer.tokens for m in self.members])

    def _val_contexts(self) -> torch.Tensor:
        ids = self.holdout.ids
        per_context = valid_mask(ids, self.lm.tokenizer).sum(1).cumsum(0)
        needed = int((per_context < self.configs[0].early_stop.val_tokens).sum()) + 1
        return ids[:needed]

    def restore(self) -> None:
        """Members from their newest valid checkpoints; the stream at the earliest active one.
        The constructor does it; again after checkpoints were placed in the run directories
        (a resumed attempt whose LM was loaded before its checkpoint arrived)."""
        self.members = [
            PackMember(config, run_dir, self.lm)
            for config, run_dir in zip(self.configs, self.run_dirs, strict=True)
        ]
        restored = [member.restore(self.val_acts[member.config.layer]) for member in self.members]
        candidates = [i for i, m in enumerate(self.members) if m.active] or list(
            range(len(self.members))
        )
        laggard = min(candidates, key=lambda i: self.members[i].step)
        stream_state, rng = restored[laggard]
        if rng is not None:
            torch.set_rng_state(rng)
        self.position = self.members[laggard].step
        self.stream = ActivationStream(
            self.configs[0], self.lm, self.holdout.train_start, stream_state, self.layers
        )

    def train(
        self,
        *,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        heartbeat_path: Path | None = None,
        on_oom: Callable[[dict[str, Any]], None] | None = None,
    ) -> PackResult:
        """Train one segment: until every member is done or failed, `max_seconds` or
        `should_stop()`; checkpoint every member in step with the stream before returning.
        `on_oom` gets each out-of-memory recovery's entry (see `oom_restarts`) as it happens."""
        started = time.monotonic()
        start_tokens = [member.trainer.tokens for member in self.members]
        self._segment_start = (started, start_tokens)
        reporter = ProgressReporter(on_progress, Path(heartbeat_path) if heartbeat_path else None)
        reporter.progress(self._snapshot(started, start_tokens), force=True)
        stopped = False
        last_checkpoint = (self.position, started)
        while any(member.active for member in self.members):
            if should_stop is not None and should_stop():
                stopped = True
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            try:
                self.step(reporter.beat)
                out_of_memory = None
            except torch.OutOfMemoryError as exc:
                out_of_memory = (str(exc), isinstance(exc, ForwardOutOfMemory))  # recover
                # below, once the traceback (and the tensors its frames hold) is gone
            if out_of_memory is not None:
                restart = self._recover_from_oom(*out_of_memory)
                if on_oom is not None:
                    on_oom(restart)
                start_tokens = [member.trainer.tokens for member in self.members]
                self._segment_start = (started, start_tokens)
                continue
            reporter.progress(self._snapshot(started, start_tokens))
            if self._checkpoint_due(*last_checkpoint):
                self._checkpoint()
                last_checkpoint = (self.position, time.monotonic())
        self._checkpoint()
        snapshot = self._snapshot(started, start_tokens)
        reporter.progress(snapshot, force=True)
        results = [
            self._result(member, member_snapshot, stopped)
            for member, member_snapshot in zip(self.members, snapshot["members"], strict=True)
        ]
        return PackResult(
            members=results,
            position=self.position,
            oom_restarts=list(self.oom_restarts),
            elapsed_s=time.monotonic() - started,
        )

    def step(self, tick: Callable[[], None] = lambda: None) -> None:
        """One batch of the stream (one LM forward, done in chunks of shuffle_buffer_tokens);
        each active member in step with it trains on it. Raises torch.OutOfMemoryError."""
        self._maybe_inject_oom(in_forward=False)
        try:
            self._maybe_inject_oom(in_forward=True)
            batch = self.stream.next_batch(tick=tick)
        except torch.OutOfMemoryError as exc:
            raise ForwardOutOfMemory(str(exc)) from None
        for index, member in enumerate(self.members):
            if not member.active or member.step != self.position:
                continue
            layer = member.config.layer
            acts = batch[layer]
            if self._nan_at.get(index) == member.step:
                acts = torch.full_like(acts, float("nan"))
            try:
                member.train_step(acts, self.val_acts[layer])
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                log.exception("pack member %d (%s) failed", index, member.run_dir)
                member.error = exc
                continue
            if member.done:
                member.write_checkpoint(self.stream.state)
                started, start_tokens = self._segment_start
                elapsed = max(time.monotonic() - started, 1e-9)
                member.finalize(
                    self.lm, self.holdout, (member.trainer.tokens - start_tokens[index]) / elapsed
                )
        self.position += 1

    def _maybe_inject_oom(self, in_forward: bool) -> None:
        fault = self._inject_oom
        if fault is None or (fault.above_lm_batch is not None) != in_forward:
            return
        if not fault.fires(self.position, self.configs):
            return
        if fault.once:
            self._inject_oom = None
        raise torch.OutOfMemoryError(f"injected out-of-memory at step {self.position}")

    def _recover_from_oom(self, message: str, in_forward: bool) -> dict[str, Any]:
        """Restore every member from its newest checkpoint with half the LM forward's batch
        (an out-of-memory in the forward) or half the micro-batch (sae.oom); return the entry
        recorded in `oom_restarts`."""
        configs, restart = halve_for(self.configs, self.position, message, in_forward)
        log.warning("%s (%s): resuming from the newest checkpoints", restart["note"], message)
        self.oom_restarts.append(restart)
        errors = [member.error for member in self.members]
        del self.members, self.stream
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.configs = configs
        self.restore()
        for member, error in zip(self.members, errors, strict=True):
            member.error = error
        return restart

    def _checkpoint_due(self, position_then: int, time_then: float) -> bool:
        trains = [member.config.train for member in self.members if member.active]
        batches = self.position - position_then
        by_tokens = any(
            t.checkpoint_every_tokens is not None
            and batches * t.batch_tokens >= t.checkpoint_every_tokens
            for t in trains
        )
        by_time = any(
            t.checkpoint_every_minutes is not None
            and time.monotonic() - time_then >= 60 * t.checkpoint_every_minutes
            for t in trains
        )
        return by_tokens or by_time

    def _checkpoint(self) -> None:
        """Checkpoint every healthy member in step with the stream, at its position."""
        for member in self.members:
            if member.error is None and member.step == self.position:
                member.write_checkpoint(self.stream.state)

    def _snapshot(self, started: float, start_tokens: list[int]) -> dict[str, Any]:
        elapsed = max(time.monotonic() - started, 1e-9)
        members = [
            member.snapshot((member.trainer.tokens - tokens) / elapsed, elapsed)
            for member, tokens in zip(self.members, start_tokens, strict=True)
        ]
        batch_tokens = self.configs[0].train.batch_tokens
        return {
            "step": self.position,
            "tokens": self.position * batch_tokens,
            "elapsed_s": elapsed,
            "members": members,
        }

    def _result(self, member: PackMember, snapshot: dict[str, Any], stopped: bool) -> SegmentResult:
        metrics = {k: v for k, v in snapshot.items() if k not in ("step", "tokens")}
        if member.done and member.error is None:
            metrics["evals"] = member.finalize(self.lm, self.holdout, snapshot["tokens_per_s"])
        error = member.error
        return SegmentResult(
            step=member.step,
            tokens=member.trainer.tokens,
            total_tokens=member.config.train.total_tokens,
            done=member.done,
            early_stopped=member.early_stopped,
            stopped=stopped,
            checkpoint=str(member.checkpoint or ""),
            metrics=metrics,
            elapsed_s=snapshot["elapsed_s"],
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
