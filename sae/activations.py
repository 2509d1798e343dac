"""Training batches of LM activations, shuffled in chunks, exactly resumable.

The head of the context stream is held out (validation and final evals). After it, contexts are
run through the LM in chunks of at least `train.shuffle_buffer_tokens` valid tokens; each chunk's
activations are permuted with a generator seeded by (seed, chunk index) and served as batches.
The stream's state is tiny: (chunk index, cursor where the chunk starts, batches served). A resumed
stream rebuilds the current chunk from its cursor (the LM is deterministic) and skips the
batches already served, so it yields exactly what the uninterrupted stream would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sae.config import RunConfig
from sae.errors import DataError
from sae.lm import LoadedLM, residuals_after
from sae.packing import Context, Cursor, iter_contexts, valid_mask


@dataclass
class HeldOut:
    """The held-out contexts (never trained on) and where training data starts."""

    ids: Tensor
    labels: Tensor
    train_start: Cursor


def take_holdout(config: RunConfig, lm: LoadedLM) -> HeldOut:
    """The first contexts of the stream, enough for evals.holdout_tokens valid tokens."""
    contexts: list[Context] = []
    valid = 0
    for context in iter_contexts(config, lm.tokenizer, Cursor(), wrap_to=None):
        contexts.append(context)
        valid += int(valid_mask(context.ids, lm.tokenizer).sum())
        if valid >= config.evals.holdout_tokens:
            break
    if not contexts:
        raise DataError(
            f"dataset {config.dataset!r} yields no context of {config.context_len} tokens"
            + (" with PII (pii_only)" if config.pii_only else "")
        )
    return HeldOut(
        ids=torch.stack([c.ids for c in contexts]),
        labels=torch.stack([c.labels for c in contexts]),
        train_start=contexts[-1].after,
    )


def activations_of(
    lm: LoadedLM,
    layers: Sequence[int],
    ids: Tensor,
    batch_size: int,
    tick: Callable[[], None] = lambda: None,
) -> dict[int, Tensor]:
    """Activations (valid tokens, d_model) of contexts `ids` after each of `layers` (one forward
    per batch of contexts), on the LM's device, LM dtype."""
    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for batch in ids.split(batch_size):
        hidden = residuals_after(lm, layers, batch)
        valid = valid_mask(batch, lm.tokenizer).to(lm.device)
        for layer, tensors in parts.items():
            tensors.append(hidden[layer][valid])
        tick()
    return {layer: torch.cat(tensors) for layer, tensors in parts.items()}


@dataclass(frozen=True)
class StreamState:
    """Where an ActivationStream stands."""

    chunk: int
    chunk_start: Cursor
    served: int

    def as_dict(self) -> dict[str, int]:
        return {
            "chunk": self.chunk,
            "row": self.chunk_start.row,
            "offset": self.chunk_start.offset,
            "served": self.served,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, int]) -> StreamState:
        return cls(
            int(raw["chunk"]), Cursor(int(raw["row"]), int(raw["offset"])), int(raw["served"])
        )


class ActivationStream:
    """Batches of (train.batch_tokens, d_model) activations after the held-out part, one per
    layer of `layers` (the same tokens in the same order for each)."""

    def __init__(
        self,
        config: RunConfig,
        lm: LoadedLM,
        train_start: Cursor,
        state: StreamState | None,
        layers: Sequence[int],
    ) -> None:
        self.config, self.lm, self.layers = config, lm, tuple(sorted(set(layers)))
        self.state = state or StreamState(0, train_start, 0)
        self._contexts = iter_contexts(config, lm.tokenizer, self.state.chunk_start, train_start)
        self._buffer: dict[int, Tensor] | None = None
        self._order: Tensor | None = None
        self._next_start = self.state.chunk_start

    def next_batch(self, tick: Callable[[], None] = lambda: None) -> dict[int, Tensor]:
        """The next batch of each layer; fills a new chunk when the current one is used up."""
        batch_tokens = self.config.train.batch_tokens
        if self._buffer is None:
            self._fill(tick)
        assert self._buffer is not None and self._order is not None
        if (self.state.served + 1) * batch_tokens > len(self._order):
            self.state = StreamState(self.state.chunk + 1, self._next_start, 0)
            self._fill(tick)
        assert self._buffer is not None and self._order is not None
        start = self.state.served * batch_tokens
        rows = self._order[start : start + batch_tokens]
        batch = {layer: acts[rows] for layer, acts in self._buffer.items()}
        self.state = StreamState(self.state.chunk, self.state.chunk_start, self.state.served + 1)
        return batch

    def _fill(self, tick: Callable[[], None]) -> None:
        train = self.config.train
        contexts: Iterator[Context] = self._contexts
        ids: list[Tensor] = []
        valid = 0
        while valid < train.shuffle_buffer_tokens:
            context = next(contexts)
            ids.append(context.ids)
            valid += int(valid_mask(context.ids, self.lm.tokenizer).sum())
            self._next_start = context.after
        self._buffer = activations_of(
            self.lm, self.layers, torch.stack(ids), train.lm_batch_size, tick
        )
        seed = (train.seed * 1_000_003 + self.state.chunk) % 2**63
        generator = torch.Generator().manual_seed(seed)
        tokens = len(self._buffer[self.layers[0]])
        self._order = torch.randperm(tokens, generator=generator).to(self.lm.device)

    def state_dict(self) -> dict[str, int]:
        return self.state.as_dict()
