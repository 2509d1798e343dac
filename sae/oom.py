"""Out of memory in a pack's batch (sae.pack), and what to try next with the same math.

- In the LM forward (`ForwardOutOfMemory`, raised while the activation stream fills a chunk):
  half the contexts per forward (`train.lm_batch_size`; the same activations, so the same
  batches) while it is above 1 context, then as below.
- Anywhere else in the batch: half the micro-batch, twice the accumulation (the same effective
  batch). It must divide `train.batch_tokens`, so halving stops at an odd micro-batch: then
  `OutOfMemory` (a GPU with more memory is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from sae.config import RunConfig
from sae.errors import ConfigError, OutOfMemory


class ForwardOutOfMemory(torch.OutOfMemoryError):
    """torch.OutOfMemoryError raised in the LM forward that fills the activation stream."""


@dataclass(frozen=True)
class InjectedOOM:
    """Test hook: torch.OutOfMemoryError each time the stream reaches `at_step` while some
    member's micro-batch is above `above_micro_batch` tokens (None: only the first time). With
    `above_lm_batch` it is raised in the LM forward instead, while the forward takes more than
    that many contexts. With `above_members`, only while the pack has more members than that."""

    at_step: int
    above_micro_batch: int | None = None
    above_lm_batch: int | None = None
    above_members: int | None = None

    def fires(self, step: int, configs: Sequence[RunConfig]) -> bool:
        """Whether to raise at `step` for a pack of `configs` (a one-off fault: the caller
        drops it once it fired)."""
        if step != self.at_step:
            return False
        if self.above_members is not None and len(configs) <= self.above_members:
            return False
        if self.above_lm_batch is not None:
            return configs[0].train.lm_batch_size > self.above_lm_batch
        if self.above_micro_batch is not None:
            return max(c.train.micro_batch_tokens for c in configs) > self.above_micro_batch
        return True

    @property
    def once(self) -> bool:
        """It fires only the first time (nothing it depends on changes with halving)."""
        return self.above_micro_batch is None and self.above_lm_batch is None


def with_micro_batch_halved(config: RunConfig, times: int = 1) -> RunConfig:
    """`config` with 2**`times` the gradient accumulation: the same effective batch in
    micro-batches 2**`times` smaller (ConfigError when they would not divide the batch)."""
    raw = config.model_dump()
    raw["train"]["grad_accum_steps"] *= 2**times
    try:
        return RunConfig.model_validate(raw)
    except ValidationError:
        raise ConfigError(
            f"a micro-batch of {config.train.micro_batch_tokens} tokens cannot be halved "
            f"{times} time(s) (train.batch_tokens / train.grad_accum_steps)"
        ) from None


def with_lm_batch_halved(config: RunConfig, times: int = 1) -> RunConfig:
    """`config` with `train.lm_batch_size` halved `times` times (at least 1 context)."""
    train = config.train.model_copy(
        update={"lm_batch_size": max(1, config.train.lm_batch_size >> times)}
    )
    return config.model_copy(update={"train": train})


def halve_for(
    configs: Sequence[RunConfig], position: int, message: str, in_forward: bool
) -> tuple[list[RunConfig], dict[str, Any]]:
    """The pack's configs for the retry after an out-of-memory at stream `position`, and the
    entry that records it (`halved`: "lm_batch" or "micro_batch"; `note`: one line)."""
    if in_forward and configs[0].train.lm_batch_size > 1:
        halved = [with_lm_batch_halved(config) for config in configs]
        before, after = configs[0].train.lm_batch_size, halved[0].train.lm_batch_size
        note = (
            f"out of memory in the LM forward at step {position}; LM batch {before} -> "
            f"{after} contexts"
        )
        return halved, {"at_step": position, "halved": "lm_batch", "note": note}
    halved = [_half_micro_batch(config, message) for config in configs]
    note = (
        f"out of memory at step {position}; micro-batch "
        f"{_micro_batches(configs)} -> {_micro_batches(halved)} tokens"
    )
    return halved, {
        "at_step": position,
        "halved": "micro_batch",
        "grad_accum_steps": [c.train.grad_accum_steps for c in halved],
        "micro_batch_tokens": [c.train.micro_batch_tokens for c in halved],
        "note": note,
    }


def _half_micro_batch(config: RunConfig, message: str) -> RunConfig:
    """`config` with twice the gradient accumulation (OutOfMemory when that is impossible)."""
    try:
        return with_micro_batch_halved(config)
    except ConfigError:
        raise OutOfMemory(
            f"out of memory ({message}) at a micro-batch of "
            f"{config.train.micro_batch_tokens} tokens, which cannot be halved "
            "(train.batch_tokens / train.grad_accum_steps): a GPU with more memory is needed"
        ) from None


def _micro_batches(configs: Sequence[RunConfig]) -> str:
    """The members' micro-batches in tokens ("64", or "64, 128" when they differ)."""
    sizes = [config.train.micro_batch_tokens for config in configs]
    return str(sizes[0]) if len(set(sizes)) == 1 else ", ".join(map(str, sizes))
