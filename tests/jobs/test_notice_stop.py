"""What an interruption notice does to a training job, stage by stage against the fakes: the
GPU-side watch moves the job to PREEMPTING and stops the segment (a rebalance recommendation
only stops the segment); one that comes while bootstrap runs preempts the job at once. What
`supervise_training` does next is in test_notice_handoff.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import jobs.notice_watch
from jobs.notice_watch import CHANNEL_ENV, act_on_notice, stop_for_notice
from jobs.providers.notice import Notice, NoticeChannel, NoticeKind, notices_json
from jobs.stages import bootstrap
from queue_app.statemachine import JobState
from tests.jobs.stage_world import StageWorld
from tests.jobs.test_training_task import Segment, Trainer, _send

S = JobState
INTERRUPTION = Notice(kind=NoticeKind.INTERRUPTION, at=2e9, action="terminate")
REBALANCE = Notice(kind=NoticeKind.REBALANCE, at=2e9 - 60)


@pytest.fixture(autouse=True)
def _fresh_watch() -> Iterator[None]:
    """Each test starts with no watch and no pending stop (they are per process)."""
    yield
    for watch in jobs.notice_watch._watches.values():
        watch.stop()
    jobs.notice_watch._watches.clear()
    jobs.notice_watch._stop_segment.clear()


def test_an_interruption_notice_makes_the_job_preempting_and_stops_the_segment(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, S.TRAINING)
    act_on_notice(stage_world.store, job_id, 1, INTERRUPTION)
    job = stage_world.job(job_id)
    assert job.state is S.PREEMPTING and "interruption notice" in (job.reason or "")
    assert stop_for_notice()


def test_a_rebalance_recommendation_only_stops_the_segment(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, S.TRAINING)
    act_on_notice(stage_world.store, job_id, 1, REBALANCE)
    assert stage_world.job(job_id).state is S.TRAINING
    assert stop_for_notice()


def test_a_notice_while_bootstrap_runs_preempts_the_job_and_bootstrap_resumes_it(
    stage_world: StageWorld,
) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, S.BOOTSTRAPPING)  # the worker is up and warming up
    act_on_notice(stage_world.store, job_id, 1, INTERRUPTION)
    job = stage_world.job(job_id)
    assert (job.state, job.preemptions) == (S.PREEMPTED, 1)
    assert "before training" in (job.reason or "")
    resumed = stage_world.deliver(bootstrap, job_id)
    assert resumed.replacement is not None
    assert resumed.replacement.tasks[0].args[0]["attempt"] == 2


def test_a_notice_after_training_changes_nothing(stage_world: StageWorld) -> None:
    job_id = stage_world.sweep()
    stage_world.launch(job_id, S.COLLECTING)
    act_on_notice(stage_world.store, job_id, 1, INTERRUPTION)
    assert stage_world.job(job_id).state is S.COLLECTING
    assert not stop_for_notice()


class WaitingTrainer(Trainer):
    """Trains until should_stop() says so (10 s at most), like the real trainer's loop."""

    def train(self, should_stop: Callable[[], bool], **kwargs: Any) -> Segment:
        deadline = time.monotonic() + 10
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().train(should_stop=should_stop, **kwargs)


def test_a_segment_stops_on_the_notice_its_instance_is_given(
    stage_world: StageWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notice_file = tmp_path / "notice.json"
    notice_file.write_text(notices_json([INTERRUPTION]))
    channel = NoticeChannel(kind="file", location=str(notice_file), poll_s=0.05)
    monkeypatch.setenv(CHANNEL_ENV, channel.model_dump_json())
    workdir = tmp_path / "instance"
    workdir.mkdir()
    job_id = stage_world.sweep()
    (workdir / "job.json").write_text(stage_world.job(job_id).job_spec.config.model_dump_json())
    monkeypatch.setenv("SAEFLEET_WORKDIR", str(workdir))
    trainer = WaitingTrainer(workdir / "run")
    monkeypatch.setattr(jobs.notice_watch, "_watches", {})
    monkeypatch.setattr("jobs.training_task._training_run", lambda *_: trainer)
    stage_world.launch(job_id, S.TRAINING)
    _send(stage_world)
    assert stage_world.attempt(job_id).segment_stopped is True
    assert stage_world.job(job_id).state is S.PREEMPTING
