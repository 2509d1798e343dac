"""W&B tracking from the GPU side with `WANDB_MODE=offline`, read back from the offline run: a
tracked job's segments log the trainer's progress to one run (id from the job, grouped by
sweep), a resumed attempt continues that run id, the final evals land in its summary, the key
reaches the instance's secrets file and nothing else, and an untracked job makes no run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import jobs.pack_training
import jobs.training_task
from jobs.bootstrap import WANDB_KEY_VARIABLE
from jobs.remote import layout_for
from jobs.stages import bootstrap
from jobs.tracking import RunTracker, wandb_run_id
from jobs.training_task import train_segment
from queue_app.jobspec import JobConfig
from queue_app.statemachine import JobState
from sae.checkpoint import checkpoint_name
from tests.jobs.stage_world import StageWorld
from tests.support.wandb_offline import written_runs

KEY = "wandb-key-that-must-never-be-logged-0123456789"
TRACKING = {"wandb_project": "sae-sweeps", "wandb_entity": "interp-team"}


@dataclass
class Segment:
    step: int
    done: bool
    stopped: bool
    checkpoint: str
    metrics: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Two 4-step segments reporting what the real trainer reports; the second finishes."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.calls = run_dir, 0

    def train(self, on_progress: Callable[[dict[str, Any]], None], **_: Any) -> Segment:
        self.calls += 1
        for step in range(4 * self.calls - 3, 4 * self.calls + 1):
            on_progress(
                {
                    "step": step,
                    "tokens": step * 512,
                    "loss": 1.0 / step,
                    "fvu": 0.5 / step,
                    "l0": 32.0,
                    "dead_fraction": 0.25,
                    "tokens_per_s": 1000.0,
                    "lr": 1e-3,
                }
            )
        done = self.calls == 2
        evals = {"fvu": 0.05, "l0": 31.5, "ce_loss_recovered": 0.9, "pii_probe": {"f1": 1}}
        return Segment(
            step=4 * self.calls,
            done=done,
            stopped=False,
            checkpoint=str(self.run_dir / "checkpoints" / checkpoint_name(4 * self.calls)),
            metrics={"evals": evals} if done else {},
        )


@pytest.fixture
def instance_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv(WANDB_KEY_VARIABLE, KEY)
    workdir = tmp_path / "instance"
    workdir.mkdir()
    monkeypatch.setenv("SAEFLEET_WORKDIR", str(workdir))
    return workdir


def start(world: StageWorld, workdir: Path, monkeypatch: pytest.MonkeyPatch, **job: Any) -> str:
    job_id = world.sweep(**job)
    (workdir / "job.json").write_text(json.dumps(world.job(job_id).spec["config"]))
    trainer = Trainer(workdir / "run")
    monkeypatch.setattr(jobs.training_task, "_training_run", lambda *_: trainer)
    world.launch(job_id, JobState.TRAINING)
    return job_id


def send(world: StageWorld, job_id: str, segment: int) -> None:
    world.store.claim_segment(job_id, 1, segment)
    kwargs = {"job_id": job_id, "attempt": 1, "segment": segment, "instance_id": "i"}
    assert train_segment.apply(kwargs=kwargs).state == "SUCCESS"


def test_segments_and_a_resumed_attempt_log_to_one_run_per_job(
    stage_world: StageWorld,
    instance_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = start(stage_world, instance_dir, monkeypatch, tracking=TRACKING)
    send(stage_world, job_id, 1)
    job = stage_world.job(job_id)
    config = JobConfig.model_validate(job.spec["config"])
    assert config.tracking is not None
    resumed = RunTracker.open(config.tracking, config, job, 2, instance_dir)  # attempt 2
    assert resumed is not None
    resumed.log_progress({"step": 5, "loss": 0.2})
    resumed.finish()
    send(stage_world, job_id, 2)

    runs = written_runs(instance_dir, lambda runs: len(runs) == 3)
    assert {(r.run_id, r.group, r.project, r.entity, r.name) for r in runs} == {
        (wandb_run_id(job_id), job.sweep_id, "sae-sweeps", "interp-team", job.name)
    }
    first = runs[0].history
    assert [h["_step"] for h in first] == [1, 2, 3, 4]
    assert first[0]["train/loss"] == 1.0 and first[0]["train/dead_fraction"] == 0.25
    assert {"train/fvu", "train/l0", "train/tokens_per_s"} <= set(first[-1])
    assert runs[0].config["attempt"] == 1 and runs[1].config["attempt"] == 2
    assert runs[2].summary["eval/fvu"] == 0.05 and runs[2].summary["eval/l0"] == 31.5
    assert "eval/pii_probe" not in runs[2].summary  # scalars only

    written = [p.read_bytes() for p in (instance_dir / "wandb").rglob("*") if p.is_file()]
    assert not any(KEY.encode() in data for data in written)
    assert KEY not in caplog.text


def test_an_untracked_job_makes_no_run(
    stage_world: StageWorld, instance_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = start(stage_world, instance_dir, monkeypatch)
    send(stage_world, job_id, 1)
    assert not (instance_dir / "wandb").exists()


def test_the_key_reaches_the_instance_like_the_hf_token_only_when_tracked(
    stage_world: StageWorld, instance_dir: Path
) -> None:
    for tracking, expected in ((TRACKING, True), (None, False)):
        job_id = stage_world.sweep(**({"tracking": tracking} if tracking else {}))
        instance = stage_world.launch(job_id, JobState.BOOTSTRAPPING)
        stage_world.store.update_instance(instance.instance_id, broker_port=6399)  # its tunnel
        assert stage_world.deliver(bootstrap, job_id).state == "RETRY"  # uploaded, waits
        files = stage_world.ssh.files[instance.instance_id]
        layout = layout_for(instance)
        assert (f"{WANDB_KEY_VARIABLE}={KEY}".encode() in files[layout.secrets_env]) is expected
        assert KEY.encode() not in files[layout.job_config]
        assert KEY not in json.dumps(stage_world.job(job_id).spec)
    assert os.environ[WANDB_KEY_VARIABLE] == KEY


class PackStandIn:
    """A pack of two for one 4-step segment: both report progress, the second finishes."""

    def __init__(self, run_dir: Path, members: list[str]) -> None:
        self.run_dir, self.ids = run_dir, members
        self.members = [SimpleNamespace(active=True), SimpleNamespace(active=False)]

    def train(self, on_progress: Callable[[dict[str, Any]], None], **_: Any) -> SimpleNamespace:
        for step in range(1, 5):
            members = [{"step": step, "loss": (i + 1) / step} for i in range(2)]
            on_progress({"step": step, "members": members})
        final = self.run_dir / self.ids[1] / "final"
        final.mkdir(parents=True)
        (final / "metrics.json").write_text(json.dumps({"evals": {"fvu": 0.07}}))
        return SimpleNamespace(
            members=[
                SimpleNamespace(
                    checkpoint=str(self.run_dir / m / "checkpoints" / checkpoint_name(4)),
                    done=i == 1,
                    step=4,
                    error=None,
                    stopped=False,
                )
                for i, m in enumerate(self.ids)
            ]
        )


def test_each_pack_member_logs_to_its_own_run(
    stage_world: StageWorld, instance_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack_id, members = stage_world.pack(
        members=2, own={0: {"tracking": TRACKING}, 1: {"tracking": TRACKING}}
    )
    (instance_dir / "job.json").write_text(json.dumps(stage_world.job(pack_id).spec["config"]))
    stand_in = PackStandIn(instance_dir / "run", members)
    monkeypatch.setattr(jobs.pack_training, "pack_run", lambda *_: stand_in)
    stage_world.launch(pack_id, JobState.TRAINING)
    send(stage_world, pack_id, 1)

    ids = {wandb_run_id(m) for m in members}  # none for the pack job itself
    written = written_runs(instance_dir, lambda runs: {run.run_id for run in runs} == ids)
    runs = {run.run_id: run for run in written}
    first, second = (runs[wandb_run_id(m)] for m in members)
    assert (first.group, first.name, second.name) == ("sw1", "k0", "k1")
    assert [h["train/loss"] for h in first.history] == [1.0, 0.5, 1 / 3, 0.25]
    assert [h["_step"] for h in second.history] == [1, 2, 3, 4]
    assert second.summary["eval/fvu"] == 0.07 and "eval/fvu" not in first.summary
