"""Early stopping on a plateau of the validation loss: after `min_tokens`, stop once `patience`
evaluations in a row failed to beat the best loss by `min_rel_delta` (relative)."""

from __future__ import annotations

import math
from typing import Any

from sae.config import EarlyStopConfig


class PlateauStopper:
    """Feeds on validation losses; says when to stop."""

    def __init__(self, config: EarlyStopConfig) -> None:
        self.config = config
        self.best = math.inf
        self.bad_evals = 0

    def update(self, tokens: int, val_loss: float) -> bool:
        """Record a validation loss at `tokens`; True when training should stop now."""
        if val_loss < self.best * (1 - self.config.min_rel_delta):
            self.best, self.bad_evals = val_loss, 0
        else:
            self.bad_evals += 1
        return (
            self.config.enabled
            and tokens >= self.config.min_tokens
            and self.bad_evals >= self.config.patience
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])
