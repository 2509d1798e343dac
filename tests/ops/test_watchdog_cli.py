"""`tick_command`: one tick in the foreground against the real test Redis, as JSON and as
tables."""

from __future__ import annotations

import json

import pytest

from ops.watchdog_cli import tick_command
from queue_app.settings import Settings
from queue_app.store import Store
from watchdog.tick import TICK_LEASE


def test_once_json_prints_the_report(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tick_command(once=True, json_out=True) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] is False
    assert report["instances"] == 0 and report["actions"] == [] and report["errors"] == []


def test_once_human_says_when_another_tick_runs(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.lease(TICK_LEASE, ttl_s=30):
        assert tick_command(once=True, json_out=False) == 0
    assert "skipped: another tick holds the fleet-wide lock" in capsys.readouterr().out


def test_unreachable_redis_is_exit_code_1(
    home: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAEFLEET_REDIS_URL", "redis://127.0.0.1:1/0")
    assert tick_command(once=True, json_out=True) == 1
    assert "Redis is unreachable" in capsys.readouterr().err
