"""`saefleet service NAME`: the command lines, and `--check` saying no when nothing runs."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from ops.cli import app
from ops.services import service_argv
from queue_app.settings import Settings


def test_gpu_worker_consumes_the_queue_it_is_given(settings: Settings) -> None:
    argv, marker = service_argv(settings, "gpu-worker", "train.local-0123abcd")
    assert argv[argv.index("-Q") + 1] == "train.local-0123abcd"
    assert argv[argv.index("-c") + 1] == "1" and marker == "queue_app.celery_app worker"
    with pytest.raises(typer.BadParameter, match="--queue"):
        service_argv(settings, "gpu-worker", None)


def test_check_fails_when_the_service_does_not_run(settings: Settings) -> None:
    assert CliRunner().invoke(app, ["service", "beat", "--check"]).exit_code == 1
    unknown = CliRunner().invoke(app, ["service", "nope"])
    assert unknown.exit_code == 2 and "unknown service 'nope'" in unknown.output
