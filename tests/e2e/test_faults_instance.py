"""Faults of one instance in the middle of a 2-job sweep: its GPU-side worker SIGKILLed, its
sshd SIGKILLed (the provider then reports it unhealthy: a preemption), and a preemption whose
newest checkpoint in the store is corrupt. The watchdog notices, the job resumes as attempt 2
from the newest checkpoint that verifies, and the other job is left alone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jobs.remote import layout_for
from queue_app.records import JobRecord
from sae.checkpoint import STATE
from tests.e2e.faults import instance_of, pulled_checkpoints, run_scenario
from tests.e2e.harness import ControlPlane, start_plane

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_gpu_worker_sigkilled(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)

    def kill_worker(job: JobRecord) -> None:
        instance = plane.store.instance(instance_of(plane, job))
        os.kill(int(Path(layout_for(instance).worker_pid).read_text()), signal.SIGKILL)

    done = run_scenario(
        plane, tmp_path, fleet_assets, "gpu-worker-sigkill", kill_worker, preemptions=1
    )
    first = plane.store.attempt(done.jobs[0].job_id, 1)
    assert first.end_reason and "worker" in first.end_reason, first.end_reason


def test_instance_sshd_sigkilled(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)

    def kill_sshd(job: JobRecord) -> None:
        directory = plane.settings.local_instances_dir / instance_of(plane, job)
        os.kill(int((directory / "sshd.pid").read_text()), signal.SIGKILL)

    run_scenario(plane, tmp_path, fleet_assets, "instance-sshd-sigkill", kill_sshd, preemptions=1)


def test_corrupt_newest_checkpoint(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)
    fallback: list[str] = []

    def preempt_and_corrupt(job: JobRecord) -> None:
        plane.local_provider().preempt(instance_of(plane, job))
        *_, before, newest = pulled_checkpoints(plane, job)
        with open(newest / STATE, "r+b") as state:
            state.seek(state.seek(0, os.SEEK_END) // 2)
            byte = state.read(1)
            state.seek(-1, os.SEEK_CUR)
            state.write(bytes([byte[0] ^ 0xFF]))
        fallback.append(before.name)

    done = run_scenario(
        plane,
        tmp_path,
        fleet_assets,
        "corrupt-newest-checkpoint",
        preempt_and_corrupt,
        preemptions=1,
        pulled=2,
        **{"train.total_tokens": 98_304},
    )
    second = plane.store.attempt(done.jobs[0].job_id, 2)
    assert second.resume_from == fallback[0], (second.resume_from, fallback)
