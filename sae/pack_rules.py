"""Which training runs may share one activation stream (one LM forward per batch feeding several
SAEs). Torch-free, so the planner groups a sweep's jobs with the same rule the trainer enforces.

Runs share a stream when every field of STREAM_FIELDS is equal: then the LM, the tokens, their
order and every batch are the same for all of them. The layer may differ: one forward hooks
every member's layer and stops after the deepest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae.config import RunConfig
from sae.errors import ConfigError

STREAM_FIELDS = (
    "model",
    "dataset",
    "dataset_split",
    "text_field",
    "pii_only",
    "context_len",
    "train.total_tokens",
    "train.batch_tokens",
    "train.shuffle_buffer_tokens",
    "train.seed",
    "train.lm_dtype",
    "train.lm_batch_size",
    "sae.normalize_activations",
    "early_stop.val_tokens",
    "evals.holdout_tokens",
)
"""Dotted RunConfig fields that decide the activation stream (the data, its order, the LM's
numerics, the held-out split and the normalisation)."""


def field_value(config: RunConfig, dotted: str) -> Any:
    """The value of a dotted field (`train.seed`) of `config`."""
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def stream_key(config: RunConfig) -> tuple[Any, ...]:
    """Equal for two runs exactly when they may share one activation stream."""
    return tuple(field_value(config, name) for name in STREAM_FIELDS)


def check_packable(configs: Sequence[RunConfig]) -> None:
    """Raise ConfigError naming the first field in which `configs` cannot share a stream."""
    if not configs:
        raise ConfigError("a pack needs at least one member")
    first = configs[0]
    for index, other in enumerate(configs[1:], start=1):
        for name in STREAM_FIELDS:
            ours, theirs = field_value(first, name), field_value(other, name)
            if ours != theirs:
                raise ConfigError(
                    f"pack members 0 and {index} differ in {name} ({ours!r} vs {theirs!r}): "
                    "they cannot share one activation stream"
                )
