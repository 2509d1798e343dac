"""Orphans, end to end: an instance of ours created outside any job is reaped by beat's ticks
after the grace period; an instance without our name prefix is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.instances import fleet_keypair
from jobs.providers import LaunchRequest
from jobs.providers.local import INSTANCE_TYPE, REGION
from tests.e2e.harness import ControlPlane, start_plane
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_orphan_created_outside_any_job_is_reaped(plane: ControlPlane, tmp_path: Path) -> None:
    start_plane(plane, quick_verdicts=True)
    provider = plane.local_provider()
    _, public_key = fleet_keypair(plane.settings)

    def launch(name: str) -> str:
        request = LaunchRequest(
            name=name, instance_type=INSTANCE_TYPE, region=REGION, ssh_public_key=public_key
        )
        return provider.launch(request).id

    orphan, foreign = launch("sf-made-by-hand"), launch("not-ours")

    wait_for("the orphan to be terminated", lambda: provider.get(orphan).status.gone, 60)

    assert not provider.get(foreign).status.gone
    # The tick logs its report after the terminate call returns: wait for the line.
    out = plane.home / "logs" / "control.out"
    reported = f"watchdog orphans: terminated {orphan}"
    wait_for("the orphan's termination logged", lambda: reported in out.read_text(), 30)
    assert "not an instance of any saefleet job" in out.read_text()
