"""Stage `collect` against fake SSH: the final run directory and the worker log land in the
artifact store with the headline metrics on the job; a lost connection is retried; a run
without metrics fails the job and terminates the instance; a redelivered collect collects the
same thing again and a duplicate past its stage does nothing."""

from __future__ import annotations

import json

from jobs.collect import headline_metrics
from jobs.remote import layout_for
from jobs.stage_base import backoff
from jobs.stages import collect
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState
from tests.jobs.stage_world import StageWorld

S = JobState
METRICS = {"evals": {"fvu": 0.12, "l0": 8.0, "pii_probe": {"mean_probe_f1": 0.9}}, "train": {}}


def _trained(world: StageWorld, metrics: bool = True) -> tuple[str, InstanceRecord]:
    """A job whose training finished: run/final on the instance, and the worker's log."""
    job_id = world.sweep()
    instance = world.launch(job_id, S.TRAINING)
    layout = layout_for(instance)
    files = world.ssh.files[instance.instance_id]
    files[f"{layout.final_dir}/sae.safetensors"] = b"weights"
    if metrics:
        files[f"{layout.final_dir}/metrics.json"] = json.dumps(METRICS).encode()
    files[layout.worker_log] = b"worker log\n"
    return job_id, instance


def test_collect_pulls_the_final_run_and_records_the_metrics(stage_world: StageWorld) -> None:
    job_id, _ = _trained(stage_world)
    delivery = stage_world.deliver(collect, job_id)
    assert delivery == stage_world.passed_on(job_id)
    job = stage_world.job(job_id)
    assert (job.state, job.metrics) == (S.TERMINATING, headline_metrics(METRICS))
    assert job.metrics["pii_mean_probe_f1"] == 0.9
    job_dir = stage_world.settings.job_dir("sw1", job_id)
    assert job.artifacts_dir == str(job_dir)
    assert (job_dir / "final" / "sae.safetensors").read_bytes() == b"weights"
    assert (job_dir / "logs" / "worker-a1.log").read_bytes() == b"worker log\n"


def test_a_lost_connection_is_retried(stage_world: StageWorld) -> None:
    job_id, instance = _trained(stage_world)
    stage_world.ssh.down.add(instance.instance_id)
    delivery = stage_world.deliver(collect, job_id)
    assert (delivery.state, delivery.countdown) == ("RETRY", backoff(1))
    assert stage_world.job(job_id).state is S.COLLECTING
    stage_world.ssh.down.clear()
    assert stage_world.deliver(collect, job_id).state == "SUCCESS"
    assert stage_world.job(job_id).state is S.TERMINATING


def test_a_run_without_metrics_fails_the_job_and_terminates_the_instance(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _trained(stage_world, metrics=False)
    delivery = stage_world.deliver(collect, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.failure(job_id, instance) == (
        "collect: training finished without metrics.json in run/final"
    )


def test_a_collect_redelivered_mid_way_collects_the_same_artifacts(
    stage_world: StageWorld,
) -> None:
    job_id, _ = _trained(stage_world)
    stage_world.store.transition(job_id, 1, S.COLLECTING)  # the first copy died here
    assert stage_world.deliver(collect, job_id).state == "SUCCESS"
    job = stage_world.job(job_id)
    assert (job.state, job.metrics) == (S.TERMINATING, headline_metrics(METRICS))


def test_a_duplicate_collect_past_its_stage_pulls_nothing(stage_world: StageWorld) -> None:
    job_id, _ = _trained(stage_world)
    stage_world.deliver(collect, job_id)
    connects = stage_world.ssh.connects
    again = stage_world.deliver(collect, job_id)
    assert again == stage_world.passed_on(job_id)
    assert stage_world.ssh.connects == connects
    assert [e["to"] for e in stage_world.store.events(job_id)][-1] == str(S.TERMINATING)
