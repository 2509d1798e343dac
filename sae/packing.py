"""Pack documents into fixed-length contexts: each context is one prefix token (BOS, or EOS when
the tokenizer has no BOS) followed by context_len - 1 tokens of the document stream. A `Cursor`
(row, token offset) names the next token, so packing can restart anywhere, exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sae.config import RunConfig
from sae.errors import DataError
from sae.texts import iter_documents


@dataclass(frozen=True)
class Cursor:
    """The next token to pack: token `offset` of row `row`."""

    row: int = 0
    offset: int = 0


@dataclass
class Context:
    """One packed context, its PII labels, and where packing continues after it."""

    ids: Tensor
    labels: Tensor
    after: Cursor


def valid_mask(ids: Tensor, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """Positions whose activations count: not the prefix, not BOS, not padding."""
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[..., 0] = False
    for special in (tokenizer.bos_token_id, tokenizer.pad_token_id):
        if special is not None:
            mask &= ids != special
    return mask


def iter_contexts(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase, start: Cursor, wrap_to: Cursor | None
) -> Iterator[Context]:
    """Contexts from `start` on. At the end of the data, start again at `wrap_to` (another
    pass), or stop when it is None."""
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if prefix is None:
        raise DataError(f"{config.model}: the tokenizer has neither a BOS nor an EOS token")
    body = config.context_len - 1
    cursor = start
    while True:
        ids: list[int] = []
        labels: list[int] = []
        produced = False
        for doc in iter_documents(config, tokenizer, cursor.row):
            offset = cursor.offset if doc.row == cursor.row else 0
            while offset < len(doc.ids):
                take = min(body - len(ids), len(doc.ids) - offset)
                ids += doc.ids[offset : offset + take]
                labels += doc.labels[offset : offset + take]
                offset += take
                if len(ids) == body:
                    after = (
                        Cursor(doc.row, offset) if offset < len(doc.ids) else Cursor(doc.row + 1)
                    )
                    produced = True
                    yield Context(
                        torch.tensor([prefix, *ids]),
                        torch.tensor([0, *labels], dtype=torch.int8),
                        after,
                    )
                    ids, labels = [], []
        if wrap_to is None:
            return
        if not produced and cursor == wrap_to:
            raise DataError(
                f"dataset {config.dataset!r} holds fewer than {body} tokens after the held-out "
                "part: too small to train on"
            )
        cursor = wrap_to
