"""What one watchdog tick did: the actions it took, per check, in a form both people (the CLI's
table, the log) and scripts (`--json`) read."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One thing a check did (or decided), e.g. `preempted` job j-3 with the reason why."""

    check: str
    kind: str
    target: str
    detail: str


@dataclass
class TickReport:
    """The outcome of one tick; `skipped` when another tick held the fleet-wide lock."""

    started_at: float
    skipped: bool = False
    duration_s: float = 0.0
    instances: int = 0
    actions: list[Action] = field(default_factory=list)
    errors: list[Action] = field(default_factory=list)

    def add(
        self, check: str, kind: str, target: str, detail: str, level: int = logging.WARNING
    ) -> None:
        """Record an action and log it (one line per event; interventions are warnings)."""
        self.actions.append(Action(check, kind, target, detail))
        log.log(level, "watchdog %s: %s %s: %s", check, kind, target, detail)

    def error(self, check: str, target: str, detail: str) -> None:
        """Record a check that could not do its work this tick (the next tick tries again)."""
        self.errors.append(Action(check, "error", target, detail))
        log.error("watchdog %s: %s: %s (retried next tick)", check, target, detail)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
