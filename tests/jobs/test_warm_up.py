"""`warm_up` (jobs.training_task), with a stand-in for the trainer: the GPU-side worker builds
the run (the LM loaded) before its first segment; that segment restores a checkpoint placed
since without building the run again, uses the warmed run as it is when none was placed, and
builds the run itself after a failed warm-up."""

from __future__ import annotations

import gc
import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import jobs.training_task
from jobs.training_task import warm_up
from tests.jobs.stage_world import StageWorld


class StandInRun:
    """Records how often it was built and restored; `failures` builds raise first."""

    built: list[StandInRun] = []
    failures = 0

    def __init__(self, config: Any, run_dir: Path, inject_oom: Any = None) -> None:
        if StandInRun.failures:
            StandInRun.failures -= 1
            raise RuntimeError("no LM today")
        self.run_dir, self.restores = run_dir, 0
        StandInRun.built.append(self)

    def restore(self) -> None:
        self.restores += 1


@pytest.fixture
def workdir(stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The instance's work directory (job.json) with the stand-in trainer."""
    workdir = tmp_path / "instance"
    workdir.mkdir()
    job_id = stage_world.sweep()
    (workdir / "job.json").write_text(json.dumps(stage_world.job(job_id).spec["config"]))
    monkeypatch.setenv("SAEFLEET_WORKDIR", str(workdir))
    monkeypatch.setitem(sys.modules, "sae.run", types.SimpleNamespace(TrainingRun=StandInRun))
    monkeypatch.setattr(StandInRun, "built", [])
    monkeypatch.setattr(jobs.training_task, "_runs", {})
    monkeypatch.setattr(jobs.training_task, "_warmed", set())
    return workdir


def _warm_up() -> None:
    kwargs = {"job_id": "sw1-0000", "attempt": 2, "instance_id": "fake-sw1-0000-2"}
    assert warm_up.apply(kwargs=kwargs).state == "SUCCESS"


def test_the_first_segment_restores_the_checkpoint_placed_after_the_warm_up(
    stage_world: StageWorld, workdir: Path
) -> None:
    _warm_up()
    [run] = StandInRun.built
    assert run.restores == 0
    (workdir / "run" / "checkpoints" / "step-00000008").mkdir(parents=True)  # placed since
    assert jobs.training_task._training_run(stage_world.store, "sw1-0000", 2, workdir) is run
    assert jobs.training_task._training_run(stage_world.store, "sw1-0000", 2, workdir) is run
    assert (StandInRun.built, run.restores) == ([run], 1)


def test_with_no_checkpoint_placed_the_warmed_run_is_used_as_it_is(
    stage_world: StageWorld, workdir: Path
) -> None:
    _warm_up()
    [run] = StandInRun.built
    assert jobs.training_task._training_run(stage_world.store, "sw1-0000", 2, workdir) is run
    assert run.restores == 0


def test_after_a_failed_warm_up_the_first_segment_builds_the_run(
    stage_world: StageWorld, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StandInRun, "failures", 1)
    _warm_up()  # logged, not raised
    assert StandInRun.built == []
    run = jobs.training_task._training_run(stage_world.store, "sw1-0000", 2, workdir)
    assert (StandInRun.built, run.restores) == ([run], 0)


def test_a_pack_worker_only_imports_the_trainer(
    stage_world: StageWorld, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack's run is built from its members' checkpoints once they are placed."""
    pack_id, _ = stage_world.pack(members=2)
    monkeypatch.setitem(sys.modules, "sae.pack", types.SimpleNamespace())
    kwargs = {"job_id": pack_id, "attempt": 1, "instance_id": f"fake-{pack_id}-1"}
    assert warm_up.apply(kwargs=kwargs).state == "SUCCESS"
    assert (StandInRun.built, jobs.training_task._runs) == ([], {})


def test_the_pool_process_imports_the_trainer_as_it_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's worker_process_init starts the trainer's import in a thread, so warm_up finds
    it loaded or waits on the import lock; a failing import is only logged."""
    (tmp_path / "heavy_trainer.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(jobs.training_task, "TRAINER_MODULE", "heavy_trainer")
    monkeypatch.delitem(sys.modules, "heavy_trainer", raising=False)
    from celery.signals import worker_process_init

    thresholds = gc.get_threshold()
    set_to: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "set_threshold", lambda *t: set_to.append(t))
    [(_, thread)] = [
        r for r in worker_process_init.send(sender=None) if isinstance(r[1], threading.Thread)
    ]
    thread.join(timeout=10)
    assert sys.modules["heavy_trainer"].LOADED is True
    # collections of the young generation made rarer for the imports' millions of objects
    assert set_to == [(jobs.training_task.YOUNG_GC_THRESHOLD, *thresholds[1:])]

    monkeypatch.setattr(jobs.training_task, "TRAINER_MODULE", "no_such_trainer_module")
    failing = jobs.training_task.import_trainer_in_background()
    failing.join(timeout=10)
    assert "importing the trainer ahead of warm_up failed" in caplog.text
