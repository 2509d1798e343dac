"""Faults of the control plane in the middle of a 2-job sweep: its worker, beat and tunnel
service SIGKILLed and restarted, and two beats at once. No job may lose an attempt to them:
every job succeeds on attempt 1, the finalizer runs once, and no instance is left."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from queue_app.records import JobRecord
from tests.e2e.faults import run_scenario
from tests.e2e.harness import BEAT_INTERVAL_S, QUICK_REDELIVERY, ControlPlane, start_plane

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

RESTART_AFTER_S = 2.0


def test_control_worker_sigkilled_and_restarted(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.env.update(QUICK_REDELIVERY)
    start_plane(plane)

    def kill_control(_: JobRecord) -> None:
        plane.stop("control", kill=True)
        time.sleep(RESTART_AFTER_S)
        plane.start_control(concurrency=4)

    run_scenario(plane, tmp_path, fleet_assets, "control-worker-sigkill", kill_control)


def test_beat_sigkilled_and_restarted(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)

    def kill_beat(_: JobRecord) -> None:
        plane.stop("beat", kill=True)
        time.sleep(RESTART_AFTER_S)
        plane.start_beat(interval_s=BEAT_INTERVAL_S)

    run_scenario(plane, tmp_path, fleet_assets, "beat-sigkill", kill_beat)


def test_two_beats_at_once(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)

    def second_beat(_: JobRecord) -> None:
        plane.start_beat(interval_s=BEAT_INTERVAL_S, name="beat2")

    run_scenario(plane, tmp_path, fleet_assets, "two-beats", second_beat)
    logs = plane.home / "logs"
    for beat in ("beat", "beat2"):  # both really sent ticks
        output = "".join(p.read_text() for p in logs.glob(f"{beat}.*"))
        assert "Sending due task watchdog-tick" in output, beat


def test_tunnel_service_sigkilled_and_restarted(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)

    def drop_tunnels(_: JobRecord) -> None:
        plane.stop("tunnels", kill=True)
        time.sleep(RESTART_AFTER_S)
        plane.start_tunnels()

    run_scenario(plane, tmp_path, fleet_assets, "tunnel-drop", drop_tunnels)
