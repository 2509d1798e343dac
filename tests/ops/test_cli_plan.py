"""`saefleet plan`: the example sweep priced from the built-in catalog (numbers checked against
a hand calculation), live prices from the fake Lambda API, JSON output and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.providers.lambda_api import shared_pacer
from ops.cli_plan import plan_command
from tests.support.fake_lambda import FakeLambda, running_fake_lambda

EXAMPLE = Path(__file__).parents[2] / "jobs" / "examples" / "llama31-8b-pii.yaml"

# By hand, for the example (Llama-3.1-8B layer 12, 32,768 latents, k 32, aux_k 512, context
# 128, 200M tokens, bf16):
#   params per decoder layer  4096*4096*2 + 4096*1024*2 + 3*4096*14336 = 218,103,808
#   LM FLOP/token             13 layers * (2*218,103,808 + 2*128*4096)  = 5,684,330,496
#   SAE FLOP/token            2*4096*32768 + 8*32*4096 + 6*512*4096     =   282,066,944
#   total                                                                 5,966,397,440
#   A100: 312 TFLOPS bf16 * 30% = 93.6e12 FLOP/s -> 93.6e12 / 5,966,397,440 = 15,688 tokens/s
#   hours: 200e6 / 15,687.86 / 3600 = 3.541 h + 0.25 h setup = 3.79 h
#   $/job: 3.7913 * 1.29 = 4.89 (1x A100 40 GB), * 1.79 = 6.79 (80 GB), * 14.32 = 54.29 (8x)
HAND = {"tokens_per_s": "15,688", "hours": "3.79", "a100_40": "4.89", "a100_80": "6.79"}


@pytest.fixture
def no_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LAMBDA_API_KEY", "SAEFLEET_LAMBDA_API_KEY_FILE", "SAEFLEET_LAMBDA_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    with running_fake_lambda() as api:
        yield api


def test_plan_of_the_example_prints_the_hand_calculated_numbers(
    no_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan_command(EXAMPLE, json_out=False) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ gpu_")}
    a100 = rows["gpu_1x_a100"].split("│")
    assert [cell.strip() for cell in a100[3:]] == [
        "40",
        "1.29",
        "us-east-1, us-south-1, us-west-1",
        HAND["tokens_per_s"],
        HAND["hours"],
        HAND["a100_40"],
        HAND["a100_40"],
        "",
    ]
    assert HAND["a100_80"] in rows["gpu_1x_a100_sxm"]
    assert "54.29" in rows["gpu_8x_a100_80gb_sxm4"]
    assert "Pick: gpu_1x_a100 in us-east-1 at $1.29/h" in out
    assert f"Estimate: {HAND['hours']} instance-hours, ${HAND['a100_40']} for the sweep" in out
    assert "budget $40.00" in out
    assert "as of 2025-10-30" in out and "may be stale" in out
    assert "offers no spot instances" in out
    assert "30% assumed utilization" in out


def test_plan_json_carries_the_same_numbers(
    no_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan_command(EXAMPLE, json_out=True) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["price_source"] == "catalog" and plan["prices_as_of"] == "2025-10-30"
    assert plan["pick"]["instance_type"] == "gpu_1x_a100"
    assert f"{plan['estimated_cost_usd']:.2f}" == HAND["a100_40"]
    assert f"{plan['jobs'][0]['tokens_per_s']:,.0f}" == HAND["tokens_per_s"]


def test_plan_uses_live_prices_when_a_key_is_set(
    home: Path,
    fake_lambda: FakeLambda,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LAMBDA_API_KEY", fake_lambda.api_key)
    monkeypatch.setenv("SAEFLEET_LAMBDA_BASE_URL", fake_lambda.base_url)
    shared_pacer().reset()
    fake_lambda.no_capacity("gpu_1x_a100", listed=False)
    assert plan_command(EXAMPLE, json_out=True) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["price_source"] == "live"
    assert plan["pick"] == {
        "instance_type": "gpu_1x_a100_sxm4",
        "region": "us-west-1",
        "capacity": "on_demand",
        "price_per_hour": 1.39,
        "gpu_memory_gb": 40.0,
    }
    assert not any("may be stale" in w for w in plan["warnings"])
    assert fake_lambda.paths() == ["GET instance-types"]
    assert fake_lambda.api_key not in json.dumps(plan)


def test_an_unreadable_key_file_falls_back_to_the_catalog_and_says_why(
    no_key: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SAEFLEET_LAMBDA_API_KEY_FILE", str(tmp_path / "missing.key"))
    assert plan_command(EXAMPLE, json_out=False) == 0
    out = capsys.readouterr().out
    assert "cannot read the Lambda API key file" in out and "using the built-in catalog" in out


def test_over_budget_is_shown(
    no_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "big.yaml"
    text = EXAMPLE.read_text().replace("budget_usd: 40 ", "budget_usd: 2 ")
    sweep.write_text(text + "grid:\n  sae.k: [16, 32]\n")
    assert plan_command(sweep, json_out=False) == 0
    out = capsys.readouterr().out
    assert "Jobs on their pick" in out
    assert "Over budget:" in out and "exceeds budget_usd $2.00" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("name: [unclosed", "not valid YAML"),
        ("name: x\njob: {model: m}\nbogus: 1\n", "bogus: unknown field"),
    ],
)
def test_a_bad_sweep_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "sweep.yaml"
    if content is not None:
        path.write_text(content)
    assert plan_command(path, json_out=False) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_plan_shows_the_packs_and_the_cost_with_and_without_them(
    no_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {**yaml.safe_load(EXAMPLE.read_text()), "grid": {"sae.k": [16, 32, 64, 128]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert plan_command(path, json_out=False) == 0
    out = capsys.readouterr().out
    assert "Packs (jobs sharing one LM forward; max_pack_size 8)" in out
    assert "memory: 4 members need ~40 GB" in out
    assert "Packed: 2 instance(s)" in out and "one job per instance: 4 instance(s)" in out
    assert "the fleet runs these packs, and the budget check uses this estimate" in " ".join(
        out.split()
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_pack_size": 0}, "max_pack_size: Input should be greater than or equal to 1"),
        ({"max_pack_size": 65}, "max_pack_size: Input should be less than or equal to 64"),
        ({"pack_all": True, "grid": {"train.seed": [0, 1]}}, "differ in job.train.seed"),
    ],
)
def test_bad_packing_input_exits_2_naming_the_field(
    no_key: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    message: str,
) -> None:
    raw = {**yaml.safe_load(EXAMPLE.read_text()), **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert plan_command(path, json_out=True) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
