"""The status model behind `saefleet status` and `sweep status`: per-job progress, rate, ETA
and cost, per-sweep spend against budget, fleet $/h; and the command's JSON."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.status_view import fleet_status, render
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import add_instance, make_sweep

NOW = 1_800_000_000.0


@pytest.fixture
def running_sweep(store: Store) -> str:
    training, done = make_sweep(store, "swrun", [JobState.TRAINING, JobState.SUCCEEDED], now=NOW)
    store.update_job(
        training.job_id,
        1,
        progress={
            "step": 40,
            "tokens": 20_000,
            "total_tokens": 100_000,
            "loss": 0.25,
            "l0": 31.5,
            "tokens_per_s": 1_000.0,
            "updated_at": NOW - 3,
        },
    )
    add_instance(store, training, "i-train", price_per_hour=2.0, hours=0.5, now=NOW)
    add_instance(store, done, "i-done", price_per_hour=1.0, hours=1.0, terminated=True, now=NOW)
    return "swrun"


def test_job_entries_carry_progress_rate_eta_and_cost(store: Store, running_sweep: str) -> None:
    status = fleet_status(store, now=NOW)
    [sweep] = status["sweeps"]
    training, done = sweep["jobs"]
    assert training["state"] == "TRAINING"
    assert training["instance_id"] == "i-train"
    assert (training["step"], training["tokens"], training["total_tokens"]) == (40, 20_000, 100_000)
    assert (training["loss"], training["l0"], training["tokens_per_s"]) == (0.25, 31.5, 1_000.0)
    assert training["eta_s"] == 80.0  # 80,000 tokens left at 1,000 tokens/s
    assert training["progress_age_s"] == 3.0
    assert training["cost_usd"] == pytest.approx(1.0)  # 0.5 h at $2/h
    assert done["eta_s"] is None and done["cost_usd"] == pytest.approx(1.0)


def test_sweep_spend_against_budget_and_the_fleet(store: Store, running_sweep: str) -> None:
    status = fleet_status(store, now=NOW)
    [sweep] = status["sweeps"]
    assert sweep["cost_usd"] == pytest.approx(2.0)
    assert sweep["budget_usd"] == 10.0 and sweep["budget_used"] == pytest.approx(0.2)
    assert sweep["states"] == {"TRAINING": 1, "SUCCEEDED": 1}
    fleet = status["fleet"]
    assert fleet["by_state"] == {"LAUNCHED": 1, "TERMINATING": 0, "TERMINATED": 1}
    assert fleet["usd_per_hour"] == 2.0
    assert [i["instance_id"] for i in fleet["live"]] == ["i-train"]
    assert fleet["live_by_provider"] == {"local": 1}


def test_finished_sweeps_show_only_when_asked(store: Store, running_sweep: str) -> None:
    store.finish_sweep("swrun", "/tmp/summary.json")
    assert fleet_status(store, now=NOW)["sweeps"] == []
    assert [s["sweep_id"] for s in fleet_status(store, everything=True)["sweeps"]] == ["swrun"]
    assert fleet_status(store, sweep_id="swrun")["sweeps"][0]["finished"] is True


def test_the_rich_view_renders_every_column(store: Store, running_sweep: str) -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(fleet_status(store, now=NOW)))
    text = console.export_text()
    for expected in ("swrun", "TRAINING", "20,000/100,000", "1,000", "80s", "$2.00 of $10.00"):
        assert expected in text


def test_status_json_command(settings: Settings, store: Store, running_sweep: str) -> None:
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["sweeps"][0]["sweep_id"] == "swrun"
    assert status["at"] == pytest.approx(time.time(), abs=60)
    result = CliRunner().invoke(app, ["sweep", "status", "swrun"])
    assert result.exit_code == 0 and "swrun" in result.output
