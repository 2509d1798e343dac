"""Errors `sae` raises on purpose. None is retryable: the same call cannot succeed if made
again, so the fleet fails the job with the message, which names the cause and the fix;
except after OutOfMemory, when it tries again on a GPU with more memory.

    SAEError              retryable = False for every error below
    ├── ConfigError       a config that validates alone but not against the model
    ├── DataError         dataset missing, unreadable, empty or without a usable text column
    ├── ModelLoadError    model missing, gated without a token, or not a causal LM
    ├── TrainingDiverged  a NaN or infinite loss (fails that SAE alone in a pack)
    └── OutOfMemory       out of GPU memory with no smaller micro-batch left to try
                          (the fleet does not fail the job for it: its next attempt runs
                          on a GPU type with more memory, see jobs.oom)
"""

from __future__ import annotations

from typing import ClassVar


class SAEError(Exception):
    """Base of the errors below."""

    retryable: ClassVar[bool] = False
    """Whether the same call may succeed if made again."""


class ConfigError(SAEError):
    """The run config does not fit the model (e.g. layer out of range, k > d_sae)."""


class DataError(SAEError):
    """The dataset cannot be read or yields no usable text."""


class ModelLoadError(SAEError):
    """The LM or its tokenizer cannot be loaded."""


class TrainingDiverged(SAEError):
    """The training loss became NaN or infinite."""


class OutOfMemory(SAEError):
    """The device ran out of memory at the smallest micro-batch the batch allows; a larger
    GPU is the next thing to try."""
