"""What a tick works with: the store, the settings, the tick's clock, and the ways it reaches
the outside world (providers, SSH probes, task revocation). Those are injectable so that tests
and the benchmark replace them with in-process fakes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.providers import Provider
from queue_app.jobspec import ProviderSpec
from queue_app.settings import Settings
from queue_app.store import Store
from watchdog.probe import Probe
from watchdog.report import TickReport

ProviderLookup = Callable[[ProviderSpec], Provider]
Revoke = Callable[[str], None]


@dataclass
class TickContext:
    """One tick's view of the world; `now` is fixed for the whole tick."""

    store: Store
    settings: Settings
    providers: ProviderLookup
    probe: Probe
    revoke: Revoke
    now: float = field(default_factory=time.time)
    report: TickReport = field(init=False)

    def __post_init__(self) -> None:
        self.report = TickReport(started_at=self.now)
