"""Sweep files: validation names the field, grids expand in order, bad input is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.spec import MAX_JOBS_PER_SWEEP, SpecError, load_sweep_file, parse_sweep_text

BASE = """
name: k-sweep
provider: {name: local, price_per_hour: 0.5}
budget_usd: 10
job:
  model: /models/tiny
  layer: 1
  dataset: /data/chat.jsonl
  sae: {n_latents: 256, k: 8, aux_k: 32}
  train: {total_tokens: 20000, batch_tokens: 512}
  gpu: {require_gpu: false}
"""


def test_grid_expands_in_order_with_overrides() -> None:
    spec = parse_sweep_text(BASE + "grid:\n  sae.k: [4, 8]\n  train.lr: [0.001, 0.002]\n")
    jobs = spec.expand()
    assert [j.overrides for j in jobs] == [
        {"sae.k": 4, "train.lr": 0.001},
        {"sae.k": 4, "train.lr": 0.002},
        {"sae.k": 8, "train.lr": 0.001},
        {"sae.k": 8, "train.lr": 0.002},
    ]
    assert jobs[3].config.sae.k == 8 and jobs[3].config.train.lr == 0.002
    assert jobs[0].name == "sae.k=4,train.lr=0.001"
    assert jobs[0].config.run_config().sae.k == 4


def test_no_grid_is_one_job() -> None:
    [job] = parse_sweep_text(BASE).expand()
    assert job.overrides == {} and job.name == "k-sweep"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  foo: 1\n", "job.foo: unknown field"),
        ("grid:\n  sae.k: []\n", "grid.sae.k: needs at least one value"),
        ("grid:\n  sae.k: [-1]\n", "job.sae.k: Input should be greater than 0"),
        ("grid:\n  sae.k: [4096]\n", "sae.k (4096) must not exceed sae.n_latents (256)"),
        ("grid:\n  layer.x: [1]\n", "grid.layer.x: job.layer is not a section"),
    ],
)
def test_bad_jobs_name_the_field(extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_sweep_text(BASE + extra).expand()


def test_bad_top_level_fields() -> None:
    with pytest.raises(SpecError, match="name: must be 1-48 characters"):
        parse_sweep_text(BASE.replace("name: k-sweep", "name: 'k sweep ☃'"))
    with pytest.raises(SpecError, match="budget_usd: Input should be greater than 0"):
        parse_sweep_text(BASE.replace("budget_usd: 10", "budget_usd: -3"))
    with pytest.raises(
        SpecError, match=r"provider\.price_per_hour applies only to provider 'local'"
    ):
        parse_sweep_text(BASE.replace("name: local,", "name: lambda,"))


def test_huge_grid_is_refused() -> None:
    values = list(range(40))
    text = BASE + f"grid:\n  sae.k: {values}\n  train.lr: {values}\n"
    with pytest.raises(SpecError, match=f"more than {MAX_JOBS_PER_SWEEP} jobs"):
        parse_sweep_text(text)


def test_yaml_alias_bomb_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    with pytest.raises(SpecError, match="YAML aliases"):
        parse_sweep_text(bomb)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_sweep_file(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_sweep_file(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_sweep_file(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_sweep_file(path)


def test_a_sweeps_tracking_reaches_every_job_unless_the_job_sets_its_own() -> None:
    text = BASE + "tracking: {wandb_project: sweeps, wandb_entity: team}\ngrid:\n  sae.k: [4, 8]\n"
    jobs = parse_sweep_text(text).expand()
    assert [(j.config.tracking.wandb_project if j.config.tracking else None) for j in jobs] == [
        "sweeps",
        "sweeps",
    ]
    own = text.replace("job:\n", "job:\n  tracking: {wandb_project: mine}\n")
    assert {
        j.config.tracking.wandb_project for j in parse_sweep_text(own).expand() if j.config.tracking
    } == {"mine"}


def test_tracking_without_a_project_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"tracking\.wandb_project"):
        parse_sweep_text(BASE + "tracking: {wandb_entity: team}\n")
