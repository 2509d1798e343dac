"""The provider API failing transiently during provision and terminate of a 2-job sweep: each
operation fails once before acting (503) and once after acting (the reply lost). The stages
retry with backoff, a relaunch finds the instance the lost reply launched instead of launching
a second one, and a repeated terminate of a gone instance counts as done.

The faults are injected by a wrapper around the local provider (tests.e2e.flaky_provider)
that the control worker loads; the Lambda client's own retries of 429/5xx against a fake
Lambda API are tested in tests/jobs/providers/test_lambda_cloud.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.faults import Watch, converge, record, submit_sweep
from tests.e2e.flaky_provider import arm, remaining
from tests.e2e.harness import ControlPlane, start_plane
from tests.e2e.report import scenario

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_provider_api_fails_transiently_in_provision_and_terminate(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    arm(plane.home, "launch", ["before", "after"])
    arm(plane.home, "terminate", ["before", "after"])
    start_plane(plane, app="tests.e2e.flaky_provider")
    name = "provider-api-transient"
    with scenario(name) as row:
        fault_at = time.time()
        sweep_id = submit_sweep(plane, tmp_path, fleet_assets, name)
        with Watch(plane, sweep_id) as watch:
            done = converge(plane, sweep_id, watch)
        record(row, plane, watch, done, fault_at)
        assert remaining(plane.home, "launch") == [] and remaining(plane.home, "terminate") == []
        jobs = len(plane.store.sweep(sweep_id).job_ids)
        assert len(plane.store.instances()) == jobs  # the lost reply did not launch a second one
        assert row.preemptions == 0
        row.note = "faults armed at submit; converge s = the whole sweep"
