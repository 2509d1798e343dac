"""Evaluation of a trained SAE on held-out contexts: MSE, fraction of variance unexplained, L0,
dead-latent fraction over the held-out window, CE loss with the reconstruction spliced into the
LM vs clean vs zero-ablated (CE loss recovered), and the PII probe (see sae.probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sae.config import EvalConfig
from sae.lm import LoadedLM, residual_after, spliced
from sae.model import SparseAutoencoder
from sae.packing import valid_mask
from sae.probe import LatentDetectorStats, probe_report, top_latents

_CODE_CHUNK = 1024


def _next_token_ce(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[float, int]:
    """Summed CE of predicting each valid next token, and how many."""
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    loss = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return float(loss), int(mask[:, 1:].sum())


@dataclass
class _Totals:
    sq_err: float = 0.0
    sq_dev: float = 0.0
    active: float = 0.0
    tokens: int = 0
    ce_clean: float = 0.0
    ce_sae: float = 0.0
    ce_zero: float = 0.0
    ce_tokens: int = 0


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    lm: LoadedLM,
    layer: int,
    ids: Tensor,
    labels: Tensor,
    config: EvalConfig,
    batch_size: int,
) -> dict[str, Any]:
    """All evals on held-out contexts `ids` (contexts, context_len) with PII `labels`."""
    n_train_ctx = max(1, round(len(ids) * (1 - config.probe_test_frac)))
    split_of = {"train": slice(0, n_train_ctx), "test": slice(n_train_ctx, len(ids))}
    stats = {split: LatentDetectorStats(sae.d_sae, lm.device) for split in split_of}
    totals = _Totals()
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=lm.device)
    mean = _mean_activation(lm, layer, ids, batch_size)
    for split, rows in split_of.items():
        for batch, batch_labels in zip(
            ids[rows].split(batch_size), labels[rows].split(batch_size), strict=True
        ):
            x, mask = _score_batch(sae, lm, layer, batch.to(lm.device), mean, totals)
            for piece, piece_labels in zip(
                x.split(_CODE_CHUNK), batch_labels[mask.cpu()].split(_CODE_CHUNK), strict=True
            ):
                acts = sae.encode(piece)
                fired |= (acts > 0).any(0)
                totals.active += float((acts > 0).sum())
                stats[split].add(acts, piece_labels)
    per = max(totals.ce_tokens, 1)
    ce_clean, ce_sae, ce_zero = totals.ce_clean / per, totals.ce_sae / per, totals.ce_zero / per
    chosen = top_latents(stats["train"], min(config.probe_top_latents, sae.d_sae))
    features, split_labels = _probe_features(
        sae, lm, layer, ids, labels, split_of, chosen, batch_size
    )
    return {
        "tokens": totals.tokens,
        "mse": totals.sq_err / (totals.tokens * sae.d_in),
        "fvu": totals.sq_err / totals.sq_dev,
        "l0": totals.active / totals.tokens,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "ce_loss_clean": ce_clean,
        "ce_loss_with_sae": ce_sae,
        "ce_loss_zero_ablation": ce_zero,
        "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean)
        if ce_zero != ce_clean
        else 0.0,
        "pii_probe": probe_report(chosen, features, split_labels),
    }


def _score_batch(
    sae: SparseAutoencoder, lm: LoadedLM, layer: int, batch: Tensor, mean: Tensor, totals: _Totals
) -> tuple[Tensor, Tensor]:
    """Reconstruction error and the three CE losses of one batch of contexts; returns the
    batch's valid activations and mask."""
    mask = valid_mask(batch, lm.tokenizer)
    captured: list[Tensor] = []

    def capture(hidden: Tensor) -> Tensor:
        captured.append(hidden)
        return hidden

    with spliced(lm, layer, capture):
        clean = lm.model(input_ids=batch, use_cache=False).logits
    hidden = captured[0]
    x = hidden[mask].float()
    x_hat = torch.cat([sae(piece).x_hat for piece in x.split(_CODE_CHUNK)])
    totals.sq_err += float((x - x_hat).pow(2).sum())
    totals.sq_dev += float((x - mean).pow(2).sum())
    totals.tokens += len(x)
    ce, count = _next_token_ce(clean, batch, mask)
    totals.ce_clean += ce
    totals.ce_tokens += count
    for name, values in (("ce_sae", x_hat), ("ce_zero", torch.zeros_like(x))):
        replacement = values.to(hidden.dtype)

        def splice(h: Tensor, r: Tensor = replacement) -> Tensor:
            return h.masked_scatter(mask.unsqueeze(-1), r)

        with spliced(lm, layer, splice):
            logits = lm.model(input_ids=batch, use_cache=False).logits
        setattr(totals, name, getattr(totals, name) + _next_token_ce(logits, batch, mask)[0])
    return x, mask


def _mean_activation(lm: LoadedLM, layer: int, ids: Tensor, batch_size: int) -> Tensor:
    total: Tensor | None = None
    count = 0
    for batch in ids.split(batch_size):
        hidden = residual_after(lm, layer, batch)
        x = hidden[valid_mask(batch, lm.tokenizer).to(hidden.device)].float()
        total = x.sum(0) if total is None else total + x.sum(0)
        count += len(x)
    assert total is not None
    return total / max(count, 1)


def _probe_features(
    sae: SparseAutoencoder,
    lm: LoadedLM,
    layer: int,
    ids: Tensor,
    labels: Tensor,
    split_of: dict[str, slice],
    chosen: Tensor,
    batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Activations of the chosen latents (columns in chosen.flatten() order) per split."""
    columns = chosen.flatten().to(lm.device)
    features: dict[str, Tensor] = {}
    split_labels: dict[str, Tensor] = {}
    for split, rows in split_of.items():
        parts, label_parts = [], []
        split_ids, split_lab = ids[rows], labels[rows]
        for start in range(0, len(split_ids), batch_size):
            batch = split_ids[start : start + batch_size]
            hidden = residual_after(lm, layer, batch)
            mask = valid_mask(batch, lm.tokenizer)
            x = hidden[mask.to(hidden.device)].float()
            parts += [sae.encode(piece)[:, columns].cpu() for piece in x.split(_CODE_CHUNK)]
            label_parts.append(split_lab[start : start + batch_size][mask])
        features[split] = torch.cat(parts) if parts else torch.zeros(0, len(columns))
        split_labels[split] = (
            torch.cat(label_parts) if label_parts else torch.zeros(0, dtype=torch.int8)
        )
    return features, split_labels
