"""An interruption notice mid-segment, end to end on the local provider: the instance is told
it will be taken in two minutes; the job goes PREEMPTING and the next attempt starts at once
while the trainer stops at its next step with a checkpoint, which is pulled and handed off to
the next attempt (jobs.notice_handoff): it resumes from exactly the step the notice stopped at,
before the noticed instance would have died."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from queue_app.statemachine import JobState
from tests.e2e.harness import LONG_RUN, ControlPlane, start_plane, submit_one_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

NOTICE_S = 120.0  # EC2's two minutes: the instance dies long after the test needs it
# Half LONG_RUN's steps in one 1-minute segment: the notice is given as soon as the segment's
# training loop runs (its first progress report) and is read within 0.2 s, well before the
# segment's own end and, on any machine under ~500 steps/s, before the run's.
NOTICE_RUN = {"train.total_tokens": LONG_RUN["train.total_tokens"] // 2, "segment_minutes": 1.0}


def test_a_notice_mid_segment_loses_no_step_and_resumes_before_the_death(
    plane: ControlPlane, fleet_assets: dict[str, Path], tmp_path: Path
) -> None:
    plane.env["SAEFLEET_NOTICE_POLL_S"] = "0.2"
    start_plane(plane, quick_verdicts=True)
    sweep_id, job_id = submit_one_job(plane, tmp_path, fleet_assets, **NOTICE_RUN)

    def training_mid_segment() -> str | None:
        job, record = plane.store.job(job_id), plane.store.attempt(job_id, 1)
        assert job.state not in (JobState.COLLECTING, JobState.TERMINATING), "trained too fast"
        running = job.state is JobState.TRAINING and record.segment_status == "running"
        return record.instance_id if running and "updated_at" in job.progress else None

    instance_id = wait_for("attempt 1 training", training_mid_segment, timeout_s=120, every_s=0.02)
    told_at = time.time()
    plane.local_provider().preempt(instance_id, notice_s=NOTICE_S)
    sweep = plane.wait_sweep(sweep_id, timeout_s=600)

    job = plane.store.job(job_id)
    assert (job.state, job.attempt, job.preemptions) == (JobState.SUCCEEDED, 2, 1)
    first, second = plane.store.attempts(job_id)
    # The notice stopped segment 1 ahead of its schedule, with a checkpoint at its last step ...
    assert (first.segment, first.segment_status, first.segment_stopped) == (1, "done", True)
    stopped_at = Path(first.segment_checkpoint or "").name
    # ... which was pulled and is where attempt 2 started: no step was trained twice.
    assert first.pulled_segment == 1 and second.resume_from == stopped_at
    assert (first.handoff, first.handoff_checkpoint) == ("kept", stopped_at)
    assert int(stopped_at.removeprefix("step-")) < NOTICE_RUN["train.total_tokens"] // 512
    moves = [(e["attempt"], e["to"]) for e in plane.store.events(job_id)]
    assert moves[moves.index((1, "TRAINING")) :][:3] == [
        (1, "TRAINING"),
        (1, "PREEMPTING"),
        (1, "PREEMPTED"),
    ]
    resumed_at = next(
        e["ts"] for e in plane.store.events(job_id) if (e["attempt"], e["to"]) == (2, "TRAINING")
    )
    assert resumed_at < told_at + NOTICE_S  # training again before the instance's death
    assert sweep.finalize_runs == 1
    summary = json.loads(Path(sweep.summary_path or "").read_text())
    assert summary["states"] == {"SUCCEEDED": 1}
    assert plane.running_instances() == []
    print(json.dumps({"stopped_at": stopped_at, "training_again_s": resumed_at - told_at}))
