"""PNG plots: one run's loss and L0 over tokens, and a sweep's FVU-vs-L0 frontier across jobs.
Torch-free (the control plane draws the frontier)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_training(
    history: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]], path: Path
) -> Path:
    """Training loss (and validation FVU) and L0 against tokens seen."""
    figure, (loss_ax, l0_ax) = plt.subplots(1, 2, figsize=(10, 4))
    tokens = [h["tokens"] for h in history]
    loss_ax.plot(tokens, [h["loss"] for h in history], label="train loss")
    if validation:
        loss_ax.plot(
            [v["tokens"] for v in validation],
            [v["fvu"] for v in validation],
            "o-",
            label="validation FVU",
        )
    loss_ax.set(xlabel="tokens", ylabel="loss", yscale="log", title="loss")
    loss_ax.legend()
    l0_ax.plot(tokens, [h["l0"] for h in history])
    l0_ax.set(xlabel="tokens", ylabel="L0 (active latents per token)", title="L0")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_frontier(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """FVU against L0, one point per job (`name`, `fvu`, `l0`), the Pareto frontier joined."""
    figure, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([p["l0"] for p in points], [p["fvu"] for p in points])
    for point in points:
        ax.annotate(str(point["name"]), (point["l0"], point["fvu"]), fontsize=7)
    frontier: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda p: (p["l0"], p["fvu"])):
        if not frontier or point["fvu"] < frontier[-1]["fvu"]:
            frontier.append(point)
    ax.plot([p["l0"] for p in frontier], [p["fvu"] for p in frontier], "--", color="gray")
    ax.set(xlabel="L0", ylabel="FVU", title="FVU vs L0 across jobs")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
