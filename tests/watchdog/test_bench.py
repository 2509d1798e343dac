"""The tick benchmark runs end to end on a small fleet and reports what a tick took."""

from __future__ import annotations

import json

import pytest

from watchdog.bench import main


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--instances", "20", "--ticks", "2", "--latency-scale", "0.1", "--json"]) == 0

    out = json.loads(capsys.readouterr().out)
    assert out["latency_s"]["ssh_command_s"] == pytest.approx(0.004)
    [row] = out["rows"]
    assert row["instances"] == 20 and row["actions"] == 0 and row["errors"] == 0
    assert 0 < row["warm_tick_s"] < 5
