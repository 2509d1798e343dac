"""Packs end to end on the local provider: one instance runs one PackRun for several jobs of a
sweep, and every member stays a job (its own record, state, checkpoints, final artifacts,
result in the sweep chord and cost share). Packs of one are the other scenarios.

One run of a pack of four covers, in the same run: a member that fails alone (its loss made
NaN by the worker's test hook), a member that stops early, a preemption of the pack's
instance mid-training (every member still training resumes from the same step) and a cancel
of one member; a pack of two runs without faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.job_cost import job_cost_usd
from jobs.pack_training import FAULTS_FILE
from jobs.upload_board import Outcome, UploadBoard
from queue_app.statemachine import JobState
from tests.e2e.harness import (
    LONG_RUN,
    ControlPlane,
    pulled_checkpoint_while_training,
    start_plane,
)
from tests.e2e.held_stages import arm, reached, release
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

NEVER = LONG_RUN["train.total_tokens"]
# Member 3 stops early (a plateau: no evaluation improves tenfold) once past 4,096 tokens;
# the others may not stop before the end.
EARLY_STOP = {
    "early_stop.enabled": True,
    "early_stop.patience": 1,
    "early_stop.min_rel_delta": 10.0,
    "early_stop.eval_every_tokens": 2048,
}
NAN_STEP = 12
PRICED = {"name": "local", "price_per_hour": 3.6}
ROUNDING_USD = 5e-7
"""A JobResult's cost is rounded to the micro-dollar: each share is off by at most this."""


def _summary(plane: ControlPlane, sweep_id: str) -> dict:
    sweep = plane.wait_sweep(sweep_id, timeout_s=240)
    assert sweep.finalize_runs == 1
    return json.loads(Path(sweep.summary_path or "").read_text())


def _instances(plane: ControlPlane, sweep_id: str) -> list:
    return [i for i in plane.store.instances() if i.sweep_id == sweep_id]


def test_pack_of_two_runs_on_one_instance_and_shares_its_cost(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane)
    sweep_file = write_sweep(
        tmp_path, fleet_assets, grid={"sae.k": [4, 8]}, max_pack_size=2, provider=PRICED
    )
    sweep_id = plane.submit(sweep_file)
    summary = _summary(plane, sweep_id)

    sweep = plane.store.sweep(sweep_id)
    [pack_id] = sweep.pack_ids
    members = plane.store.sweep_jobs(sweep_id)
    assert [m.pack_id for m in members] == [pack_id, pack_id]
    assert summary["states"] == {"SUCCEEDED": 2}
    [instance] = _instances(plane, sweep_id)
    assert instance.job_id == pack_id and instance.members == sweep.job_ids
    shares = [job["cost_usd"] for job in summary["jobs"]]
    assert shares[0] == pytest.approx(shares[1], rel=1e-3)
    assert shares[0] > 0 and sum(shares) == pytest.approx(instance.cost_usd(), abs=ROUNDING_USD * 2)
    assert {job["metrics"]["steps"] for job in summary["jobs"]} == {16_384 // 512}
    assert all(job["artifacts_dir"] for job in summary["jobs"])
    for member in sweep.job_ids:  # each member's checkpoints went up on its own upload board
        board = UploadBoard(plane.store.r, member, 1).entries().values()
        assert board and {entry.outcome for entry in board} == {Outcome.KEPT}
    assert plane.store.job(pack_id).state is JobState.SUCCEEDED
    assert plane.running_instances() == []


def test_pack_of_four_with_a_failure_an_early_stop_a_preemption_and_a_cancel(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    start_plane(plane, app="tests.e2e.held_stages")
    grid = {"early_stop.min_tokens": [NEVER, NEVER, NEVER, 4096]}
    run = {**LONG_RUN, **EARLY_STOP}
    sweep_file = write_sweep(
        tmp_path, fleet_assets, grid=grid, max_pack_size=4, provider=PRICED, **run
    )
    sweep_id = plane.submit(sweep_file)
    [pack_id] = plane.store.sweep(sweep_id).pack_ids
    plain, failing, cancelled, early = plane.store.sweep(sweep_id).job_ids

    # The NaN hook is read when the pack's run is built: write it before training starts.
    arm(plane.home, "supervise_training", pack_id, 1)
    wait_for(
        "the pack's supervisor", lambda: reached(plane.home, "supervise_training", pack_id, 1), 120
    )
    workdir = Path(
        plane.store.instance(plane.store.attempt(pack_id, 1).instance_id or "").workdir or ""
    )
    (workdir / FAULTS_FILE).write_text(json.dumps({"nan_at": {failing: NAN_STEP}}))
    release(plane.home, pack_id)

    def mid_training_after_a_checkpoint() -> str | None:
        jobs = {j.job_id: j for j in plane.store.sweep_jobs(sweep_id)}
        if not (jobs[failing].terminal and jobs[early].terminal):
            return None
        job = jobs[plain]
        if pulled_checkpoint_while_training(plane.store, plain) is None:
            return None
        assert job.latest_checkpoint
        if int(job.progress.get("step", 0)) < int(job.latest_checkpoint.removeprefix("step-")) + 3:
            return None
        return plane.store.attempt(pack_id, 1).instance_id

    first_instance = wait_for(
        "a member failed, one stopped early, a checkpoint",
        mid_training_after_a_checkpoint,
        timeout_s=240,
    )
    plane.local_provider().preempt(first_instance)
    wait_for(
        "the pack training again",
        lambda: (
            plane.store.job(plain).attempt == 2
            and plane.store.job(plain).state is JobState.TRAINING
        ),
        timeout_s=120,
        every_s=0.05,
    )
    assert plane.run("job", "cancel", cancelled).returncode == 0
    summary = _summary(plane, sweep_id)

    results = {job["job_id"]: job for job in summary["jobs"]}
    assert summary["states"] == {"SUCCEEDED": 2, "FAILED": 1, "CANCELLED": 1}
    assert results[plain]["state"] == "SUCCEEDED" and results[plain]["attempts"] == 2
    assert results[plain]["preemptions"] == 1
    assert results[early]["state"] == "SUCCEEDED" and results[early]["attempts"] == 1
    assert results[early]["metrics"]["early_stopped"] is True
    assert (
        results[failing]["state"] == "FAILED" and "TrainingDiverged" in results[failing]["reason"]
    )
    assert results[cancelled]["state"] == "CANCELLED" and results[cancelled]["attempts"] == 2
    # Every member still training resumed from the same step, its own checkpoint.
    resumed = {plane.store.attempt(m, 2).resume_from for m in (plain, cancelled)}
    assert len(resumed) == 1 and None not in resumed
    assert results[plain]["metrics"]["steps"] == NEVER // 512
    # The two instances' cost, split among the members training at each moment.
    first, second = sorted(_instances(plane, sweep_id), key=lambda i: i.launched_at)
    assert first.members == [plain, failing, cancelled, early]
    assert second.members == [plain, cancelled] and cancelled in second.member_left_at
    total = first.cost_usd() + second.cost_usd()
    shares = [r["cost_usd"] for r in results.values()]
    assert sum(shares) == pytest.approx(total, abs=ROUNDING_USD * len(shares))
    assert results[early]["cost_usd"] < results[plain]["cost_usd"]
    assert job_cost_usd(plane.store, plain) == pytest.approx(results[plain]["cost_usd"], abs=1e-6)
    assert plane.running_instances() == []
    print(
        json.dumps(
            {
                m: {k: r[k] for k in ("state", "attempts", "cost_usd", "reason")}
                | {"steps": r["metrics"].get("steps")}
                for m, r in results.items()
            },
            indent=2,
        )
    )
