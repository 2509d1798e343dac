"""Fixtures for the watchdog's unit tests: a store on fakeredis (or the real test Redis), a
fleet of records (tests.support.fake_fleet), and a tick context wired to in-process fakes
(provider, SSH probe, revocation)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import fakeredis
import pytest

from jobs.providers.fake import FakeProvider
from queue_app.jobspec import ProviderSpec
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.store import Store
from tests.support.fake_fleet import FakeFleet
from watchdog.context import TickContext
from watchdog.probe import ProbeResult


class FakeProbe:
    """A probe that answers from a dict (default: healthy) and records whom it probed."""

    def __init__(self) -> None:
        self.results: dict[str, ProbeResult] = {}
        self.probed: list[str] = []
        self.retained: set[str] = set()
        self.delay_s = 0.0

    def __call__(self, instance: InstanceRecord) -> ProbeResult:
        self.probed.append(instance.instance_id)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.results.get(instance.instance_id, ProbeResult(heartbeat_age_s=1.0))

    def retain(self, instance_ids: Iterable[str]) -> None:
        self.retained = set(instance_ids)


@dataclass
class World(FakeFleet):
    """The fakes a tick talks to, and a builder of records in the store."""

    probe: FakeProbe = field(default_factory=FakeProbe)
    revoked: list[str] = field(default_factory=list)

    def context(self, now: float | None = None) -> TickContext:
        return TickContext(
            store=self.store,
            settings=self.settings,
            providers=self.provider_for,
            probe=self.probe,
            revoke=self.revoked.append,
            now=now if now is not None else time.time(),
        )

    def provider_for(self, spec: ProviderSpec) -> FakeProvider:
        return self.provider


@pytest.fixture
def wd_settings(home: Path) -> Settings:
    """Settings for unit ticks: quick thresholds."""
    return Settings(
        watchdog_liveness_misses=2,
        watchdog_orphan_grace_s=60,
        cost_cap_grace_s=60,
        watchdog_ssh_timeout_s=2,
    )


@pytest.fixture
def world(wd_settings: Settings) -> World:
    return World(Store(fakeredis.FakeRedis(decode_responses=True)), wd_settings)


@pytest.fixture
def redis_world(store: Store, wd_settings: Settings) -> World:
    """Like `world`, on the real test Redis (for the fleet-wide lock)."""
    return World(store, wd_settings)
