"""Stage `bootstrap` over fake SSH: upload once, start the worker once and ask it to warm up,
poll until it answers a ping; wait (bounded) for the SSH tunnel; a worker that dies at start-up
fails the job with its log and terminates the instance; a duplicate uploads and starts nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

from jobs.bootstrap import TUNNEL_TIMEOUT_S
from jobs.checkpoints import pulled_checkpoint_dir, store_pulled_checkpoint
from jobs.remote import layout_for
from jobs.ssh import CommandResult, SSHConnectError
from jobs.stage_base import backoff
from jobs.stages import bootstrap
from queue_app.celery_app import WARM_UP_TASK
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState
from sae.checkpoint import write_checkpoint
from tests.jobs.stage_world import StageWorld, ago

S = JobState
BROKER_PORT = 16379


def _ready(world: StageWorld, tunnel: bool = True) -> tuple[str, InstanceRecord]:
    """A job at BOOTSTRAPPING with an instance (and its SSH tunnel to our Redis)."""
    job_id = world.sweep()
    instance = world.launch(job_id, S.BOOTSTRAPPING)
    if tunnel:
        world.store.update_instance(instance.instance_id, broker_port=BROKER_PORT)
    return job_id, world.instance(instance.instance_id)


def _starts(world: StageWorld, instance: InstanceRecord) -> list[str]:
    return [c for c in world.ssh.commands[instance.instance_id] if "setsid nohup" in c]


def _drops_once() -> Callable[[str], CommandResult]:
    """An answer that loses the connection the first time, then succeeds."""
    dropped: list[str] = []

    def answer(command: str) -> CommandResult:
        if not dropped:
            dropped.append(command)
            raise SSHConnectError("connection lost")
        return CommandResult(0, "", "")

    return answer


def test_bootstrap_uploads_starts_the_worker_and_waits_for_its_ping(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _ready(stage_world)
    layout = layout_for(instance)
    polled = stage_world.deliver(bootstrap, job_id)
    assert (polled.state, polled.countdown) == ("RETRY", stage_world.settings.poll_interval_s)
    files = stage_world.ssh.files[instance.instance_id]
    assert {layout.job_config, layout.broker_url_file, layout.start_script} <= set(files)
    assert f"127.0.0.1:{BROKER_PORT}/".encode() in files[layout.broker_url_file]
    assert b"celery" in files[layout.start_script]
    assert stage_world.attempt(job_id).bootstrap_phase == "started"
    [warm_up] = stage_world.sent  # the worker loads the trainer before the first segment
    assert (warm_up["name"], warm_up["kwargs"]["instance_id"]) == (
        WARM_UP_TASK,
        instance.instance_id,
    )

    assert stage_world.deliver(bootstrap, job_id).state == "RETRY"  # no answer yet
    stage_world.worker_answers(job_id, instance)
    delivery = stage_world.deliver(bootstrap, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.job(job_id).state is S.TRAINING
    assert len(_starts(stage_world, instance)) == 1


def test_bootstrap_waits_for_the_tunnel_then_gives_up(stage_world: StageWorld) -> None:
    job_id, instance = _ready(stage_world, tunnel=False)
    waiting = stage_world.deliver(bootstrap, job_id)
    assert (waiting.state, waiting.countdown) == ("RETRY", 1.0)
    assert stage_world.attempt(job_id).waiting_for == "the SSH tunnel"
    assert stage_world.ssh.files[instance.instance_id] == {}

    stage_world.store.update_attempt(job_id, 1, waiting_since=ago(TUNNEL_TIMEOUT_S + 1))
    assert stage_world.deliver(bootstrap, job_id).state == "SUCCESS"
    assert "no SSH tunnel" in stage_world.failure(job_id, instance)


def test_a_dropped_connection_is_retried_and_uploads_only_once(stage_world: StageWorld) -> None:
    job_id, instance = _ready(stage_world)
    stage_world.ssh.answer("setsid nohup", _drops_once())  # while starting the worker
    dropped = stage_world.deliver(bootstrap, job_id)
    assert (dropped.state, dropped.countdown) == ("RETRY", backoff(1))
    assert stage_world.attempt(job_id).bootstrap_phase == "uploaded"

    stage_world.ssh.files[instance.instance_id].clear()
    assert stage_world.deliver(bootstrap, job_id).state == "RETRY"
    assert stage_world.ssh.files[instance.instance_id] == {}  # not uploaded again
    assert stage_world.attempt(job_id).bootstrap_phase == "started"


def test_a_worker_that_dies_at_start_up_fails_the_job_with_its_log(
    stage_world: StageWorld,
) -> None:
    job_id, instance = _ready(stage_world)
    stage_world.ssh.answer("^kill -0", CommandResult(1, "", ""))
    stage_world.ssh.answer(
        "tail -n", CommandResult(0, "ModuleNotFoundError: No module named x", "")
    )
    delivery = stage_world.deliver(bootstrap, job_id)
    assert delivery == stage_world.passed_on(job_id)
    reason = stage_world.failure(job_id, instance)
    assert "exited during start-up" in reason and "No module named x" in reason


def test_a_duplicate_bootstrap_uploads_and_starts_nothing(stage_world: StageWorld) -> None:
    job_id, instance = _ready(stage_world)
    stage_world.store.transition(job_id, 1, S.TRAINING)
    delivery = stage_world.deliver(bootstrap, job_id)
    assert delivery == stage_world.passed_on(job_id)
    assert stage_world.ssh.commands[instance.instance_id] == []
    assert stage_world.ssh.files[instance.instance_id] == {}


def _stored(world: StageWorld, sweep_id: str, job_id: str, step: int) -> str:
    """A checkpoint of `job_id` at `step`, kept in the store; its name."""
    root = pulled_checkpoint_dir(world.settings, sweep_id, job_id, "any").parent
    name = write_checkpoint(root, step, step * 512, b"state%d" % step, "{}").name
    assert store_pulled_checkpoint(world.settings, sweep_id, job_id, name)
    return name


def test_a_resumed_pack_gives_each_member_its_own_newest_checkpoint_that_verifies(
    stage_world: StageWorld,
) -> None:
    pack_id, (plain, corrupt, fresh) = stage_world.pack()
    newest = _stored(stage_world, "sw1", plain, 8)
    older = _stored(stage_world, "sw1", corrupt, 4)
    broken = _stored(stage_world, "sw1", corrupt, 8)
    (stage_world.settings.checkpoints_dir("sw1", corrupt) / broken / "state.pt").write_bytes(b"x")
    instance = stage_world.launch(pack_id, S.BOOTSTRAPPING)
    stage_world.store.update_instance(instance.instance_id, broker_port=BROKER_PORT)
    assert stage_world.deliver(bootstrap, pack_id).state == "RETRY"  # the worker starts
    stage_world.worker_answers(pack_id, instance)

    assert stage_world.deliver(bootstrap, pack_id) == stage_world.passed_on(pack_id)

    layout = layout_for(instance)
    files = stage_world.ssh.files[instance.instance_id]
    plans = {m: json.loads(files[layout.member_restore_plan(m)]) for m in (plain, corrupt)}
    assert {m: plan["name"] for m, plan in plans.items()} == {plain: newest, corrupt: older}
    assert layout.member_restore_plan(fresh) not in files  # nothing to resume from
    assert [stage_world.job(m).resume_from for m in (plain, corrupt, fresh)] == [
        newest,
        older,
        None,
    ]
