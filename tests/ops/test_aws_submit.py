"""Bad AWS sweeps are refused by `saefleet sweep submit` with exit code 2 and a message naming
the field, before anything is launched or enqueued (moto stands in for AWS)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.tiny_sweep import tiny_sweep
from ops.cli import main
from tests.support.moto_aws import (
    FAKE_SECRET_KEY,
    MotoAWS,
)

GOOD = {
    "name": "aws",
    "regions": ["us-east-1"],
    "instance_types": ["g5.xlarge"],
    "ssh_cidrs": ["203.0.113.7/32"],
}


@pytest.fixture
def aws(moto_aws: MotoAWS, home: Path) -> MotoAWS:
    return moto_aws


def submit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], without: str = "", **provider: Any
) -> str:
    """Run `saefleet sweep submit` on a sweep with `provider` (GOOD's fields overridden, field
    `without` left out); returns what it printed, after asserting exit code 2."""
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("")
    fields = {k: v for k, v in (GOOD | provider).items() if k != without}
    spec = tiny_sweep(tmp_path / "model", tmp_path / "corpus.jsonl", provider=fields)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    sys.argv = ["saefleet", "sweep", "submit", str(path)]
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    out = capsys.readouterr()
    assert FAKE_SECRET_KEY not in out.out + out.err
    return out.err


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        ({"ssh_cidrs": ["203.0.113.7"]}, "provider.ssh_cidrs"),
        ({"ssh_cidrs": ["10.0.0.300/8"]}, "provider.ssh_cidrs"),
        ({"instance_types": ["x9.mega"]}, "provider.instance_types"),
        ({"price_per_hour": 1.0}, "provider.price_per_hour"),
    ],
)
def test_a_bad_aws_sweep_file_exits_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    home: Path,
    provider: dict[str, Any],
    field: str,
) -> None:
    assert field in submit(tmp_path, capsys, **provider)


def test_a_region_without_the_type_exits_2_before_any_launch(
    aws: MotoAWS, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = submit(tmp_path, capsys, regions=["us-east-1", "us-west-1"])
    assert "provider.regions: us-west-1 offers none of g5.xlarge" in err
    assert aws.run_requests == []


def test_missing_ssh_cidrs_exit_2_saying_how(
    aws: MotoAWS, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "provider.ssh_cidrs is not set" in submit(tmp_path, capsys, without="ssh_cidrs")


def test_missing_credentials_exit_2_saying_how(
    aws: MotoAWS,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    err = submit(tmp_path, capsys)
    assert "aws-credentials: no AWS credentials found" in err
