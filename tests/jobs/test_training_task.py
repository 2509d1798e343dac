"""`train_segment`, the GPU-side task, with a stand-in for the trainer: it records the segment's
checkpoint and progress, runs a segment once however often its message comes, ignores a stale
attempt's segment, records a trainer crash as a failed segment (not an exception), and stops
when the job is asked to. Out of memory: each halving of the micro-batch is kept in the job's
record at once, a resumed attempt trains with it, and running out at the smallest micro-batch
marks the failed segment for the move to a larger GPU (jobs.oom)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jobs.training_task
import sae.run
from jobs.pack_training import FAULTS_FILE
from jobs.training_task import train_segment
from queue_app.statemachine import JobState
from sae.checkpoint import checkpoint_name
from sae.errors import OutOfMemory
from sae.oom import InjectedOOM
from tests.jobs.stage_world import StageWorld

S = JobState


@dataclass
class Segment:
    """What the stand-in trainer returns (the fields of sae.run.SegmentResult it reads)."""

    step: int
    done: bool
    stopped: bool
    checkpoint: str


class Trainer:
    """Trains one 4-step segment per call; `crash` makes it raise instead; `oom_restarts`
    are reported to `on_oom` first, as sae.pack reports its halvings of the micro-batch."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.calls = run_dir, 0
        self.crash: Exception | None = None
        self.oom_restarts: list[dict[str, Any]] = []

    def train(
        self,
        max_seconds: float,
        should_stop: Callable[[], bool],
        on_progress: Callable[[dict[str, Any]], None],
        heartbeat_path: Path,
        on_oom: Callable[[dict[str, Any]], None],
    ) -> Segment:
        self.calls += 1
        for restart in self.oom_restarts:
            on_oom(restart)
        if self.crash is not None:
            raise self.crash
        step = 4 * self.calls
        on_progress({"step": step, "tokens": step * 512})
        stopped = should_stop()
        checkpoint = self.run_dir / "checkpoints" / checkpoint_name(step)
        return Segment(step=step, done=False, stopped=stopped, checkpoint=str(checkpoint))


@pytest.fixture
def trainer(stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trainer:
    """The instance's work directory (job.json, run/) and the stand-in trainer in it."""
    workdir = tmp_path / "instance"
    workdir.mkdir()
    job_id = stage_world.sweep()
    config = stage_world.job(job_id).spec["config"]
    (workdir / "job.json").write_text(json.dumps(config))
    monkeypatch.setenv("SAEFLEET_WORKDIR", str(workdir))
    stand_in = Trainer(workdir / "run")
    monkeypatch.setattr(jobs.training_task, "_training_run", lambda *_: stand_in)
    stage_world.launch(job_id, S.TRAINING)
    return stand_in


def _send(world: StageWorld, segment: int = 1, attempt: int = 1) -> str:
    """Run the task for segment `segment` of the first job (claimed as supervise would)."""
    job_id = "sw1-0000"
    if attempt == world.job(job_id).attempt:
        world.store.claim_segment(job_id, attempt, segment)
    instance_id = f"fake-{job_id}-{attempt}"
    kwargs = {"job_id": job_id, "attempt": attempt, "segment": segment, "instance_id": instance_id}
    assert train_segment.apply(kwargs=kwargs).state == "SUCCESS"
    return job_id


def test_a_segment_records_its_checkpoint_and_progress(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    job_id = _send(stage_world)
    record = stage_world.attempt(job_id)
    assert (record.segment, record.segment_status) == (1, "done")
    assert record.segment_checkpoint == f"checkpoints/{checkpoint_name(4)}"
    assert (record.segment_done, record.segment_stopped) == (False, False)
    assert stage_world.job(job_id).progress["step"] == 4


def test_a_redelivered_segment_message_trains_nothing(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    job_id = _send(stage_world)
    kwargs = {"job_id": job_id, "attempt": 1, "segment": 1, "instance_id": "fake-sw1-0000-1"}
    assert train_segment.apply(kwargs=kwargs).state == "SUCCESS"
    assert trainer.calls == 1
    assert stage_world.attempt(job_id).segment_status == "done"


def test_a_stale_attempts_segment_trains_nothing(stage_world: StageWorld, trainer: Trainer) -> None:
    job_id = "sw1-0000"
    stage_world.store.claim_segment(job_id, 1, 1)
    stage_world.store.transition(job_id, 1, S.PREEMPTED)
    stage_world.store.begin_attempt(job_id, 2)
    _send(stage_world, attempt=1)
    assert trainer.calls == 0
    assert stage_world.attempt(job_id).segment_status == "sent"


def test_a_trainer_crash_is_a_failed_segment_not_an_exception(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    trainer.crash = RuntimeError("CUDA out of memory")
    job_id = _send(stage_world)
    record = stage_world.attempt(job_id)
    assert (record.segment_status, record.segment_error, record.segment_out_of_memory) == (
        "failed",
        "RuntimeError: CUDA out of memory",
        False,
    )


def test_a_segment_stops_when_the_job_is_asked_to(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    stage_world.store.update_job("sw1-0000", 1, stop_requested="cost_cap")
    job_id = _send(stage_world)
    assert stage_world.attempt(job_id).segment_stopped is True


def test_each_halving_of_the_micro_batch_is_kept_for_later_attempts(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    note = "out of memory at step 5; micro-batch 512 -> 256 tokens"
    trainer.oom_restarts = [{"at_step": 5, "note": note}]
    job_id = _send(stage_world)
    assert stage_world.job(job_id).micro_batch_halvings == 1
    assert stage_world.attempt(job_id).out_of_memory == [note]
    assert stage_world.attempt(job_id).segment_status == "done"


def test_a_halving_of_the_lm_forward_batch_is_kept_apart(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    note = "out of memory in the LM forward at step 5; LM batch 8 -> 4 contexts"
    trainer.oom_restarts = [{"at_step": 5, "halved": "lm_batch", "note": note}]
    job_id = _send(stage_world)
    job = stage_world.job(job_id)
    assert (job.lm_batch_halvings, job.micro_batch_halvings) == (1, 0)
    assert stage_world.attempt(job_id).out_of_memory == [note]


def test_out_of_memory_at_the_smallest_micro_batch_marks_the_failed_segment(
    stage_world: StageWorld, trainer: Trainer
) -> None:
    trainer.crash = OutOfMemory("out of memory at a micro-batch of 1 tokens")
    job_id = _send(stage_world)
    record = stage_world.attempt(job_id)
    assert (record.segment_status, record.segment_out_of_memory) == ("failed", True)
    assert record.segment_error == "OutOfMemory: out of memory at a micro-batch of 1 tokens"


def test_a_resumed_attempt_trains_with_the_kept_halvings_and_the_injected_fault(
    stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = stage_world.sweep()
    workdir = tmp_path / "instance"
    workdir.mkdir()
    (workdir / "job.json").write_text(json.dumps(stage_world.job(job_id).spec["config"]))
    fault = {"step": 3, "above_micro_batch": 64, "above_members": 1}
    (workdir / FAULTS_FILE).write_text(json.dumps({"oom_at": fault}))
    stage_world.launch(job_id, S.TRAINING)
    stage_world.store.update_job(job_id, 1, micro_batch_halvings=2, lm_batch_halvings=1)
    stage_world.store.transition(job_id, 1, S.PREEMPTED)
    stage_world.store.begin_attempt(job_id, 2)
    built: dict[str, Any] = {}
    monkeypatch.setattr(
        sae.run, "TrainingRun", lambda config, run_dir, **kw: built.update(kw, config=config)
    )
    jobs.training_task._training_run(stage_world.store, job_id, 2, workdir)
    spec_accum = stage_world.job(job_id).job_spec.config.train.grad_accum_steps
    assert built["config"].train.grad_accum_steps == 4 * spec_accum
    spec_lm_batch = stage_world.job(job_id).job_spec.config.train.lm_batch_size
    assert built["config"].train.lm_batch_size == max(1, spec_lm_batch // 2)
    assert built["inject_oom"] == InjectedOOM(at_step=3, above_micro_batch=64, above_members=1)
