"""Documents from a dataset: rows streamed with `datasets` (hub id, or a local JSON/JSONL/parquet
file or directory), rendered to text (the tokenizer's chat template for conversations),
PII-tagged, and tokenised with a PII type label per token.

Rows are numbered from 0 in dataset order; a stream can start at any row (resume), and the
`pii_only` filter drops rows without keeping them from being counted.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from sae.config import RunConfig
from sae.errors import DataError
from sae.pii import PII_TYPES, PIISpan, tag_pii

TEXT_FIELDS = ("conversation", "messages", "text", "content", "prompt")
"""Columns tried, in order, when `text_field` is not set."""
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_ROWS_PER_BATCH = 64


@dataclass
class Document:
    """One row, tokenised: token ids, PII label per token (0 none, i+1 for PII_TYPES[i])."""

    row: int
    ids: list[int]
    labels: list[int]


def open_rows(config: RunConfig, start_row: int = 0) -> Iterator[dict[str, Any]]:
    """Stream the dataset's rows from `start_row` on."""
    path = Path(config.dataset).expanduser()
    token = os.environ.get(config.hf_token_env) or None
    split = config.dataset_split
    try:
        if path.is_file():
            builder = _FORMATS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"dataset {config.dataset!r}: use a .json, .jsonl or .parquet file")
            stream = datasets.load_dataset(
                builder, data_files={split: str(path)}, split=split, streaming=True
            )
        elif path.is_dir() or config.dataset.startswith((".", "/", "~")):
            if not path.exists():
                raise DataError(f"dataset {config.dataset!r}: no such file or directory")
            stream = datasets.load_dataset(str(path), split=split, streaming=True)
        else:
            stream = datasets.load_dataset(config.dataset, split=split, streaming=True, token=token)
        yield from stream.skip(start_row) if start_row else stream
    except DataError:
        raise
    except Exception as exc:
        hint = ""
        if "gated" in str(exc).lower():
            hint = (
                f" (the dataset is gated: accept its terms on the Hub and set the environment "
                f"variable {config.hf_token_env}, named by hf_token_env, to a token with access)"
            )
        raise DataError(
            f"cannot read dataset {config.dataset!r} split {split!r}: {exc}{hint}"
        ) from exc


def text_field_of(row: dict[str, Any], configured: str | None) -> str:
    """The column holding the text: the configured one, or the first of TEXT_FIELDS present."""
    if configured is not None:
        if configured not in row:
            raise DataError(f"text_field {configured!r} is not a column (columns: {sorted(row)})")
        return configured
    for name in TEXT_FIELDS:
        if name in row:
            return name
    raise DataError(
        f"no text column found (tried {TEXT_FIELDS}); set text_field (columns: {sorted(row)})"
    )


def render(value: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """Text of a cell: a string as is; a conversation through the tokenizer's chat template
    (or `role: content` lines when the tokenizer has none)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        messages = [{"role": m.get("role", "user"), "content": m["content"] or ""} for m in value]
        if tokenizer.chat_template:
            return str(tokenizer.apply_chat_template(messages, tokenize=False))
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    raise DataError(f"cannot make text of a {type(value).__name__} cell; set text_field")


def token_labels(offsets: list[tuple[int, int]], spans: list[PIISpan]) -> list[int]:
    """Label each token by the PII span its characters overlap (0 when none)."""
    labels = [0] * len(offsets)
    starts = [start for start, _ in offsets]
    for span in spans:
        first = max(bisect.bisect_right(starts, span.start) - 1, 0)
        for index in range(first, len(offsets)):
            start, end = offsets[index]
            if start >= span.end:
                break
            if end > span.start and end > start:
                labels[index] = PII_TYPES.index(span.type) + 1
    return labels


def iter_documents(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase, start_row: int = 0
) -> Iterator[Document]:
    """Tokenised, PII-labelled documents from row `start_row` on (filtered when pii_only)."""
    if not tokenizer.is_fast:
        raise DataError(f"{config.model}: a fast tokenizer is needed (for PII token offsets)")
    field: str | None = None
    batch: list[tuple[int, str, list[PIISpan]]] = []
    for row_index, row in enumerate(open_rows(config, start_row), start=start_row):
        field = field or text_field_of(row, config.text_field)
        text = render(row[field], tokenizer)
        spans = tag_pii(text)
        if spans or not config.pii_only:
            batch.append((row_index, text, spans))
        if len(batch) == _ROWS_PER_BATCH:
            yield from _tokenise(batch, tokenizer)
            batch = []
    yield from _tokenise(batch, tokenizer)


def _tokenise(
    batch: list[tuple[int, str, list[PIISpan]]], tokenizer: PreTrainedTokenizerBase
) -> Iterator[Document]:
    if not batch:
        return
    encoded = tokenizer(
        [text for _, text, _ in batch], add_special_tokens=False, return_offsets_mapping=True
    )
    eos = tokenizer.eos_token_id
    for (row, _, spans), ids, offsets in zip(
        batch, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        labels = token_labels([tuple(o) for o in offsets], spans)
        if eos is not None and (not ids or ids[-1] != eos):
            yield Document(row, [*ids, eos], [*labels, 0])
        else:
            yield Document(row, ids, labels)
