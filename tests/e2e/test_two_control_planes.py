"""Two control planes, one sweep: two SAEFLEET_HOMEs on this machine share a Redis that belongs
to neither (the test's own, as a managed Redis would be), one store, one local instances folder
(a cloud account both hosts share) and the fleet's SSH key (`SAEFLEET_HOME/keys`, copied to each
control host as an operator would). The sweep is submitted on host A; once its jobs
train and have checkpoints in the store, every process of A is SIGKILLed and never restarted.
Host B completes the sweep: its tunnel service takes over the instances' tunnels (the same
remote ports, so the GPU-side workers A launched keep their broker URL), its control worker takes
the stage messages A held once they are redelivered, and every job SUCCEEDED, the finalizer ran
once, no instance (no sshd process) is left and summary.json is in the store."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import psutil
import pytest

from jobs.objectstore import open_store, summary_key
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from tests.e2e.faults import SWEEP_TIMEOUT_S, submit_sweep
from tests.e2e.harness import QUICK_REDELIVERY, control_plane, start_plane
from tests.support.servers import require_sshd
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]


def test_host_b_completes_the_sweep_of_a_killed_host_a(
    redis_url: str, code_bundle: Path, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    require_sshd()
    instances, store_root = tmp_path / "instances", tmp_path / "store"
    shared = {
        "SAEFLEET_STORE_URL": store_root.as_uri(),
        "SAEFLEET_LOCAL_INSTANCES_DIR": str(instances),
        **QUICK_REDELIVERY,
    }
    with (
        control_plane(tmp_path / "a", redis_url) as host_a,
        control_plane(tmp_path / "b", redis_url) as host_b,
    ):
        for host in (host_a, host_b):
            shutil.copytree(code_bundle.parent, host.home / "bundles" / code_bundle.parent.name)
            host.env.update(shared)
            host.settings = Settings(
                home=host.home,
                redis_url=redis_url,
                local_instances_root=instances,
                store_url=store_root.as_uri(),
            )
        start_plane(host_a)
        sweep_id = submit_sweep(host_a, tmp_path, fleet_assets, "two-hosts")
        job_ids = host_a.store.sweep(sweep_id).job_ids

        def all_training_with_a_checkpoint() -> bool:
            jobs = host_a.store.jobs(job_ids)
            if any(j.state in (JobState.COLLECTING, JobState.TERMINATING) for j in jobs):
                raise AssertionError("a job finished training before host A was killed")
            return all(j.state is JobState.TRAINING and j.latest_checkpoint for j in jobs)

        try:
            wait_for("every job training with a checkpoint", all_training_with_a_checkpoint, 300)
        except TimeoutError as exc:
            states = {j.job_id: (j.state, j.latest_checkpoint) for j in host_a.store.jobs(job_ids)}
            raise TimeoutError(f"{exc}: {states}") from None
        for name in list(host_a.procs):
            host_a.stop(name, kill=True)
        killed_at = time.monotonic()

        shutil.copytree(host_a.settings.keys_dir, host_b.settings.keys_dir)
        first = {j: host_b.store.attempt(j, 1).instance_id for j in job_ids}
        start_plane(host_b)
        sweep = host_b.wait_sweep(sweep_id, timeout_s=SWEEP_TIMEOUT_S)
        took = time.monotonic() - killed_at
        jobs = host_b.store.sweep_jobs(sweep_id)
        assert {j.job_id: j.state for j in jobs} == dict.fromkeys(job_ids, JobState.SUCCEEDED)
        assert sweep.finalize_runs == 1
        assert host_b.running_instances() == []
        assert not [p for p in psutil.process_iter(["cmdline"]) if _instance_sshd(p, instances)]
        summary = json.loads(open_store(host_b.settings).get_bytes(summary_key(sweep_id)) or b"{}")
        assert summary["states"] == {"SUCCEEDED": len(job_ids)}
        tunnels = [json.loads(line) for line in (host_b.home / "logs" / "tunnels.log").open()]
        taken_over = {t["instance"] for t in tunnels if t["msg"].startswith("tunnel up")}
        assert set(first.values()) <= taken_over  # A's instances kept their way to Redis
        attempts = {j.job_id: j.attempt for j in jobs}
        assert attempts == dict.fromkeys(job_ids, 1)  # ... so no job lost its attempt
        print(f"two-hosts: B finished {took:.1f}s after A was killed; attempts {attempts}")


def _instance_sshd(process: psutil.Process, instances: Path) -> bool:
    """An sshd of a local instance under `instances` (its config path names the folder)."""
    cmdline = " ".join(process.info.get("cmdline") or [])
    return "sshd" in cmdline and str(instances) in cmdline
