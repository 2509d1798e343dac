"""The status model behind `saefleet status` and `sweep status`: per-job progress, rate, ETA
and cost, per-sweep spend against budget, fleet $/h; and the command's JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ops.cli import app
from ops.status_view import fleet_status, render
from ops.views import attempts_table, grid_label, short_ids
from queue_app.settings import Settings
from queue_app.statemachine import HandoffStatus, JobState
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


def rendered(status: dict[str, Any], width: int, wide: bool = False) -> list[str]:
    console = Console(width=width, record=True)
    console.print(render(status, wide))
    return console.export_text().splitlines()


def test_the_rich_view_renders_every_column_when_wide(store: Store, running_sweep: str) -> None:
    text = "\n".join(rendered(fleet_status(store, now=NOW), width=200, wide=True))
    for expected in ("swrun-0000", "TRAINING", "20,000/100,000", "1,000", "80s", "$2.00 of $10.00"):
        assert expected in text


@pytest.fixture
def six_job_sweep(store: Store) -> str:
    """A sweep as an operator meets it: six jobs in six states, long instance ids, a failure."""
    states = [JobState.TRAINING, JobState.TRAINING, JobState.SUCCEEDED]
    states += [JobState.PROVISIONING, JobState.BOOTSTRAPPING, JobState.FAILED]
    jobs = make_sweep(store, "swf46d4be", states, budget_usd=40.0, now=NOW)
    for job, instance_id in zip(jobs, LONG_INSTANCE_IDS, strict=False):
        add_instance(store, job, instance_id, price_per_hour=1.29, hours=0.4, now=NOW)
    for job in jobs[:3]:
        store.update_job(
            job.job_id,
            1,
            progress={
                "step": 1930,
                "tokens": 7_905_280,
                "total_tokens": 20_000_000,
                "loss": 0.1842,
                "l0": 31.7,
                "tokens_per_s": 10_240.0,
                "updated_at": NOW - 4,
            },
        )
    store.update_job(jobs[5].job_id, 1, reason="verify_gpu: free VRAM 11.2 GB < 38 GB needed")
    return "swf46d4be"


LONG_INSTANCE_IDS = ["0920e1ab7c4d4f0e9b6a1c2d3e4f5a6b", "0920e1ab7c4d4f0e9b6a1c2d3e4f5a6c"]
LONG_INSTANCE_IDS += ["local-3f9c2a1b", "local-77d01e5c", "local-c41a88e2", "local-5be2907d"]


def test_an_80_column_terminal_shows_one_line_per_job(store: Store, six_job_sweep: str) -> None:
    lines = rendered(fleet_status(store, now=NOW), width=80)
    assert max(len(line.rstrip()) for line in lines) <= 80
    for index, state in enumerate(("TRAINING", "TRAINING", "SUCCEEDED", "PROVISIONING")):
        [row] = [line for line in lines if line.startswith(f"{index:04d} ")]
        assert state in row and f"k={8 * 2**index}" in row
    assert sum("TRAINING" in line for line in lines) == 2
    # the two instances that share a 30-character prefix are told apart in the fleet table
    fleet = [line for line in lines if line.startswith("0920e1ab")]
    assert len(fleet) == 2 and fleet[0].split()[0] != fleet[1].split()[0]
    assert not any("verify_gpu" in line for line in lines)  # the reason is a wide column


def test_wide_adds_the_other_columns_and_full_ids(
    settings: Settings, store: Store, six_job_sweep: str
) -> None:
    narrow = CliRunner().invoke(app, ["status"], env={"COLUMNS": "80"})
    wide = CliRunner().invoke(app, ["status", "--wide"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    for extra in ("tok/s", "tokens", "instance", "provider", "capacity", "reason"):
        assert extra not in narrow.output.split("\n")[1]  # the jobs table's header
    text = wide.output
    for expected in ("tok/s", "7,905,280/20,000,000", "10,240", "on_demand", "swf46d4be-0005"):
        assert expected in text
    assert "verify_gpu: free VRAM 11.2 GB < 38 GB needed" in text  # never cut to the terminal
    assert "0920e1ab7c4d4f0e9b6a1c2d3e4f5a6b" in text


def test_short_ids_are_unique_within_what_is_shown() -> None:
    ids = ["local-3f9c2a1b", "local-3f9c2a1c", "0920e1ab7c4d4f0e", "local-77d01e5c", "ab"]
    short = short_ids(ids, min_len=10)
    assert short == {
        "local-3f9c2a1b": "local-3f9c2a1b",
        "local-3f9c2a1c": "local-3f9c2a1c",
        "0920e1ab7c4d4f0e": "0920e1ab7c",
        "local-77d01e5c": "local-77d0",
        "ab": "ab",
    }


def test_a_grid_label_keeps_what_tells_jobs_apart() -> None:
    assert grid_label({"sae.k": 16, "train.lr": 0.0001}, "x") == "k=16,lr=0.0001"
    assert grid_label({"sae.k": 16, "early_stop.k": 2}, "x") == "sae.k=16,early_stop.k=2"
    assert grid_label({}, "single-job") == "single-job"


def test_status_json_command(settings: Settings, store: Store, running_sweep: str) -> None:
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["sweeps"][0]["sweep_id"] == "swrun"
    assert status["at"] == pytest.approx(time.time(), abs=60)
    result = CliRunner().invoke(app, ["sweep", "status", "swrun"])
    assert result.exit_code == 0 and "swrun" in result.output


def test_the_attempts_table_shows_a_noticed_attempts_checkpoint_hand_off(store: Store) -> None:
    [job] = make_sweep(store, "swnotice", [JobState.TRAINING], now=NOW)
    store.start_first_attempt(job.job_id)
    store.move_handoff(job.job_id, 1, None, HandoffStatus.OPEN, handoff_opened_at=NOW)
    console = Console(width=200, record=True)
    console.print(attempts_table(store, store.job(job.job_id)))
    assert "open" in console.export_text()
    store.move_handoff(
        job.job_id, 1, HandoffStatus.OPEN, HandoffStatus.KEPT, handoff_checkpoint="step-0000000007"
    )
    console.print(attempts_table(store, store.job(job.job_id)))
    assert "kept (step-0000000007)" in console.export_text()


def test_the_attempts_table_says_what_out_of_memory_did(store: Store) -> None:
    [job] = make_sweep(store, "swoom", [JobState.TRAINING], now=NOW)
    store.start_first_attempt(job.job_id)
    note = "out of memory at step 40; micro-batch 64 -> 32 tokens"
    store.update_attempt(job.job_id, 1, out_of_memory=[note])
    console = Console(width=300, record=True)
    console.print(attempts_table(store, store.job(job.job_id)))
    assert note in console.export_text()
