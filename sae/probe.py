"""The PII probe: do single latents, or a small linear probe on a few latents, detect the tokens
the regex tagger labelled as PII?

Held-out contexts are split into a train part and a test part (by context). On the train part,
each latent is scored as a detector ("active" = predicts PII) of each PII type, and the best
latents are chosen; everything reported is measured on the test part: the best single latent's
precision/recall/F1, and a logistic-regression probe on the chosen latents.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.pii import PII_TYPES

TYPES = (*PII_TYPES, "any")
MIN_POSITIVES = 5


def type_targets(labels: Tensor) -> Tensor:
    """(tokens, len(TYPES)) booleans: token is PII of each type, last column any PII."""
    per_type = labels.long().unsqueeze(1) == torch.arange(
        1, len(PII_TYPES) + 1, device=labels.device
    )
    return torch.cat([per_type, (labels > 0).unsqueeze(1)], dim=1)


class LatentDetectorStats:
    """Per-latent counts of (active, active & type) over tokens, for one data split."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.active = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.hits = torch.zeros(d_sae, len(TYPES), dtype=torch.float64, device=device)
        self.positives = torch.zeros(len(TYPES), dtype=torch.float64, device=device)

    def add(self, acts: Tensor, labels: Tensor) -> None:
        """acts (tokens, d_sae) latent activations; labels (tokens,) PII type ids. Counted on
        the activations' device (only the small totals ever move)."""
        active = (acts > 0).to(torch.float32)
        targets = type_targets(labels.to(acts.device)).to(torch.float32)
        self.active += active.sum(0).double()
        self.hits += (active.T @ targets).double()
        self.positives += targets.sum(0).double()

    def f1(self) -> Tensor:
        """(d_sae, len(TYPES)) F1 of each latent as a detector of each type."""
        return 2 * self.hits / (self.active.unsqueeze(1) + self.positives).clamp_min(1)


def top_latents(train: LatentDetectorStats, m: int) -> Tensor:
    """(len(TYPES), m) latents with the best train-split F1 for each type."""
    return train.f1().T.topk(m, dim=1).indices.cpu()


def _prf(predicted: Tensor, truth: Tensor) -> dict[str, float]:
    tp = float((predicted & truth).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def fit_probe(features: Tensor, truth: Tensor, steps: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """Class-balanced logistic regression (LBFGS); returns (weights, bias, feature scale)."""
    scale = features.std(0).clamp_min(1e-6)
    x = features / scale
    y = truth.float()
    pos_weight = (len(y) - y.sum()) / y.sum().clamp_min(1)
    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn(x @ weights + bias, y) + 1e-3 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach(), bias.detach(), scale


def best_threshold(scores: Tensor, truth: Tensor) -> float:
    """The score threshold with the best F1 on (training) data: the probe's decision rule."""
    order = scores.argsort(descending=True)
    hits = truth[order].float().cumsum(0)
    predicted = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    f1 = 2 * hits / (predicted + truth.sum())
    best = int(f1.argmax())
    return float(scores[order[best + 1]]) if best + 1 < len(scores) else float("-inf")


def probe_report(
    chosen: Tensor,
    features: dict[str, Tensor],
    labels: dict[str, Tensor],
) -> dict[str, Any]:
    """Scores on the test split. `features[split]` holds the activations of the latents in
    `chosen.flatten()` (in that order) for each token of the split; `labels[split]` the labels."""
    m = chosen.shape[1]
    report: dict[str, Any] = {}
    for t, name in enumerate(TYPES):
        train_truth = type_targets(labels["train"])[:, t]
        test_truth = type_targets(labels["test"])[:, t]
        if train_truth.sum() < MIN_POSITIVES or test_truth.sum() < MIN_POSITIVES:
            report[name] = {"test_positives": int(test_truth.sum()), "skipped": "too few tokens"}
            continue
        columns = slice(t * m, (t + 1) * m)
        best = int(chosen[t, 0])
        latent = _prf(features["test"][:, t * m] > 0, test_truth)
        weights, bias, scale = fit_probe(features["train"][:, columns], train_truth)
        train_scores = (features["train"][:, columns] / scale) @ weights + bias
        threshold = best_threshold(train_scores, train_truth)
        test_scores = (features["test"][:, columns] / scale) @ weights + bias
        probe = _prf(test_scores > threshold, test_truth)
        report[name] = {
            "test_positives": int(test_truth.sum()),
            "best_latent": best,
            "latent": latent,
            "probe": probe,
        }
    scored = [r for name, r in report.items() if "latent" in r and name != "any"]
    return {
        "types": report,
        "latents_per_probe": m,
        "mean_latent_f1": sum(r["latent"]["f1"] for r in scored) / max(len(scored), 1),
        "mean_probe_f1": sum(r["probe"]["f1"] for r in scored) / max(len(scored), 1),
    }
