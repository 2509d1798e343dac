"""Liveness: K consecutive failed probes preempt the attempt (with the provider's account in the
reason); a good probe resets the count; worker and heartbeat checks apply while training."""

from __future__ import annotations

import time

from queue_app.statemachine import JobState
from tests.watchdog.conftest import World
from watchdog.fleet import load_fleet
from watchdog.liveness import MISSES_KEY, miss_reason
from watchdog.probe import ProbeResult
from watchdog.tick import run_tick

DOWN = ProbeResult(error="SSHConnectError: connection refused")


def test_k_consecutive_misses_preempt(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.probe.results[instance.instance_id] = DOWN

    run_tick(world.context())
    assert world.store.job(job_id).state is JobState.TRAINING
    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED and job.preemptions == 1
    assert "lost: 2 consecutive liveness misses" in (job.reason or "")
    assert "the provider still reports it running" in (job.reason or "")
    assert world.store.r.hget(MISSES_KEY, instance.instance_id) is None


def test_a_good_probe_resets_the_count(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.probe.results[instance.instance_id] = DOWN
    run_tick(world.context())
    del world.probe.results[instance.instance_id]
    run_tick(world.context())
    world.probe.results[instance.instance_id] = DOWN
    run_tick(world.context())

    assert world.store.job(job_id).state is JobState.TRAINING
    assert world.store.r.hget(MISSES_KEY, instance.instance_id) == "1"


def test_dead_worker_process_is_a_miss(world: World) -> None:
    job_id = world.sweep()
    instance = world.launch(job_id)
    world.probe.results[instance.instance_id] = ProbeResult(worker_alive=False)

    run_tick(world.context())
    run_tick(world.context())

    job = world.store.job(job_id)
    assert job.state is JobState.PREEMPTED
    assert "the GPU-side worker process is not running" in (job.reason or "")


def test_only_instances_with_an_address_in_probed_states_are_probed(world: World) -> None:
    booting = world.sweep()
    world.launch(booting, JobState.BOOTING)
    training = world.sweep()
    instance = world.launch(training)

    run_tick(world.context())

    assert world.probe.probed == [instance.instance_id]
    assert world.probe.retained == {instance.instance_id}


def test_stale_heartbeat_counts_only_from_this_segment_s_trainer_that_is_gone(
    world: World,
) -> None:
    job_id = world.sweep()
    world.launch(job_id)
    world.training(job_id)
    world.store.update_attempt(job_id, 1, segment_started_at=time.time() - 600)
    tracked = load_fleet(world.store).tracked[0]
    ctx = world.context()
    stale = world.settings.watchdog_heartbeat_max_age_s + 60

    gone = miss_reason(ctx, tracked, ProbeResult(heartbeat_age_s=stale, trainer_alive=False))
    busy = miss_reason(ctx, tracked, ProbeResult(heartbeat_age_s=stale, trainer_alive=True))
    last_segment = miss_reason(ctx, tracked, ProbeResult(heartbeat_age_s=900, trainer_alive=False))
    fresh = miss_reason(ctx, tracked, ProbeResult(heartbeat_age_s=5, trainer_alive=False))
    none_yet = miss_reason(ctx, tracked, ProbeResult())

    assert gone is not None and "the trainer process is gone" in gone
    assert busy is None and last_segment is None and fresh is None and none_yet is None


def test_heartbeat_is_not_judged_outside_training(world: World) -> None:
    job_id = world.sweep()
    world.launch(job_id, JobState.BOOTSTRAPPING)
    tracked = load_fleet(world.store).tracked[0]

    result = ProbeResult(heartbeat_age_s=10_000, worker_alive=False)
    assert miss_reason(world.context(), tracked, result) is None


def test_slow_probes_count_as_misses(world: World) -> None:
    world.settings = world.settings.model_copy(update={"watchdog_ssh_timeout_s": 0.05})
    job_id = world.sweep()
    world.launch(job_id)
    world.probe.delay_s = 1.0

    started = time.monotonic()
    run_tick(world.context())

    assert time.monotonic() - started < 0.9
    assert world.store.r.hget(MISSES_KEY, f"fake-{job_id}-1") == "1"
