"""Stage `bootstrap`: upload the code bundle and the job spec, start the GPU-side Celery worker
detached (an SSH drop does not kill it) and have it load the trainer, wait for its ping, then
place the checkpoint to resume from (a restore plan the instance downloads from the store, or
the folder itself over SFTP), after a noticed previous attempt's hand-off."""

from __future__ import annotations

import logging
import os
import posixpath
import shlex
import time
from pathlib import Path

from jobs.bundle import ensure_bundle
from jobs.checkpoint_restore import restore_plan
from jobs.checkpoint_upload import UPLOAD_ENV
from jobs.checkpoints import newest_stored_checkpoint
from jobs.errors import StageFailed
from jobs.instances import open_ssh
from jobs.notice_handoff import await_handoff
from jobs.notice_watch import CHANNEL_ENV
from jobs.remote import RemoteLayout, layout_for, reuses_local_venv, worker_hostname, worker_python
from jobs.ssh import SSHSession
from jobs.stage_base import StageContext, stage
from jobs.tunnels import tunnel_broker_url
from jobs.upload_grants import instance_uploads
from queue_app.celery_app import WARM_UP_TASK, app, train_queue
from queue_app.celery_commands import worker_argv
from queue_app.pack_mirror import following_members
from queue_app.records import InstanceRecord
from queue_app.statemachine import JobState

log = logging.getLogger(__name__)

WANDB_KEY_VARIABLE = "WANDB_API_KEY"
"""Where wandb on the instance reads its key."""

TUNNEL_TIMEOUT_S = 120.0
WORKER_POLL_S = 2.0  # the longest wait between pings of a starting worker (each waits 1 s)
LOG_TAIL_LINES = 30


@stage("bootstrap")
def bootstrap(ctx: StageContext) -> None:
    """Set the instance up and start its worker, poll until the worker answers a ping, then
    (once a noticed previous attempt has handed off its checkpoint) place the checkpoint to
    resume from. The worker loads the trainer meanwhile (`warm_up`), so a resumed attempt's
    first segment only restores the checkpoint."""
    instance = ctx.require_instance()
    layout = layout_for(instance)
    record = ctx.attempt()
    if record.bootstrap_phase != "started":
        broker_url = _worker_broker_url(ctx, instance)
        with open_ssh(instance, ctx.settings) as ssh:
            if record.bootstrap_phase != "uploaded":
                _upload(ctx, ssh, instance, layout, broker_url)
                ctx.update_attempt(bootstrap_phase="uploaded")
            _start_worker(ssh, layout)
        ctx.update_attempt(bootstrap_phase="started", worker_started_at=time.time())
        if not ctx.job.members:  # a pack builds its run per segment
            _send_warm_up(ctx, instance)
        record = ctx.attempt()
    hostname = worker_hostname(ctx.ref.job_id, ctx.ref.attempt, instance.instance_id)
    if not app.control.ping(destination=[hostname], timeout=1.0):
        waited = time.time() - (record.worker_started_at or time.time())
        _check_worker(ctx, instance, layout, waited)
        ctx.poll(countdown=min(ctx.settings.poll_interval_s, WORKER_POLL_S))
    await_handoff(ctx)  # the checkpoint to place may be one still being pulled
    with open_ssh(instance, ctx.settings) as ssh:
        _place_checkpoints(ctx, ssh, instance, layout)
    log.info("GPU-side worker %s is up", hostname)
    ctx.advance(JobState.TRAINING)


def _send_warm_up(ctx: StageContext, instance: InstanceRecord) -> None:
    """Ask the new worker to load the trainer now (it runs before the first segment)."""
    app.send_task(
        WARM_UP_TASK,
        kwargs={
            "job_id": ctx.ref.job_id,
            "attempt": ctx.ref.attempt,
            "instance_id": instance.instance_id,
        },
        task_id=f"warm-{ctx.ref.job_id}-a{ctx.ref.attempt}",
    )


def _worker_broker_url(ctx: StageContext, instance: InstanceRecord) -> str:
    """The URL the instance's worker reaches our Redis at: direct, or via the SSH tunnel."""
    if ctx.settings.fleet_broker_url is not None:
        return ctx.settings.fleet_broker_url.get_secret_value()
    if instance.broker_port is None:
        since = ctx.store.set_waiting(ctx.ref.job_id, ctx.ref.attempt, "the SSH tunnel")
        if time.time() - since > TUNNEL_TIMEOUT_S:
            raise StageFailed(
                "no SSH tunnel to the instance after "
                f"{TUNNEL_TIMEOUT_S:.0f}s: is the tunnel service running? (`saefleet up`)"
            )
        ctx.poll(countdown=1.0)
    ctx.store.clear_waiting(ctx.ref.job_id, ctx.ref.attempt)
    return tunnel_broker_url(ctx.settings.broker_url, instance.broker_port)


def _upload(
    ctx: StageContext,
    ssh: SSHSession,
    instance: InstanceRecord,
    layout: RemoteLayout,
    broker_url: str,
) -> None:
    wheel = ensure_bundle(ctx.settings.bundles_dir)
    for directory in (
        layout.bundle_dir,
        posixpath.dirname(layout.worker_log),
        layout.checkpoints_dir,
    ):
        ssh.makedirs(directory)
    remote_wheel = posixpath.join(layout.bundle_dir, wheel.name)
    ssh.put(wheel, remote_wheel)
    ssh.put_bytes(ctx.config.model_dump_json(exclude_unset=True).encode(), layout.job_config)
    ssh.put_bytes(broker_url.encode(), layout.broker_url_file, mode=0o600)
    ssh.put_bytes(_secrets_env(ctx).encode(), layout.secrets_env, mode=0o600)
    script = _start_script(ctx, instance, layout, remote_wheel)
    ssh.put_bytes(script.encode(), layout.start_script, mode=0o700)


def _place_checkpoints(
    ctx: StageContext, ssh: SSHSession, instance: InstanceRecord, layout: RemoteLayout
) -> None:
    """The checkpoint(s) to resume from, for the instance (again on a retry: it overwrites)."""
    if ctx.job.members:
        _hand_over_member_checkpoints(ctx, ssh, instance, layout)
        return
    resume_from = _hand_over_checkpoint(
        ctx, ssh, instance, ctx.ref.job_id, layout.restore_plan, layout.checkpoints_dir
    )
    if resume_from is not None:
        ctx.update_attempt(resume_from=resume_from)
        ctx.store.update_job(ctx.ref.job_id, ctx.ref.attempt, resume_from=resume_from)
        log.info("attempt %d resumes from %s", ctx.ref.attempt, resume_from)


def _hand_over_checkpoint(
    ctx: StageContext,
    ssh: SSHSession,
    instance: InstanceRecord,
    job_id: str,
    plan_file: str,
    checkpoints_dir: str,
) -> str | None:
    """The newest checkpoint of `job_id` that verifies in the store, for the instance: a
    restore plan (`plan_file`) it downloads from the store itself, or (an instance that cannot
    reach the store) the folder pushed over SFTP into `checkpoints_dir`. Its name, or None
    when the job has none."""
    sweep_id = ctx.ref.sweep_id
    if instance_uploads(instance, ctx.settings):
        plan = restore_plan(ctx.settings, sweep_id, job_id)
        if plan is not None:
            ssh.put_bytes(plan.model_dump_json().encode(), plan_file, mode=0o600)
        return plan.name if plan else None
    checkpoint = newest_stored_checkpoint(ctx.settings, sweep_id, job_id)
    if checkpoint is not None:
        _upload_dir(ssh, checkpoint, posixpath.join(checkpoints_dir, checkpoint.name))
    return checkpoint.name if checkpoint else None


def _hand_over_member_checkpoints(
    ctx: StageContext, ssh: SSHSession, instance: InstanceRecord, layout: RemoteLayout
) -> None:
    """A pack: each member resumes from its own newest checkpoint that verifies (a member
    whose newest is corrupt falls back alone)."""
    for job_id in following_members(ctx.store, ctx.ref.job_id, ctx.ref.attempt):
        resume_from = _hand_over_checkpoint(
            ctx,
            ssh,
            instance,
            job_id,
            layout.member_restore_plan(job_id),
            layout.member_checkpoints_dir(job_id),
        )
        if resume_from is None:
            continue
        ctx.store.update_attempt(job_id, ctx.ref.attempt, resume_from=resume_from)
        ctx.store.update_job(  # the newest that verifies: the one handed off on a notice too
            job_id, ctx.ref.attempt, resume_from=resume_from, latest_checkpoint=resume_from
        )
        log.info("attempt %d of %s resumes from %s", ctx.ref.attempt, job_id, resume_from)


def _secrets_env(ctx: StageContext) -> str:
    """The worker's secret environment (a 0600 file the start script sources): the Hugging Face
    token, and the W&B key when the job is tracked, each when the orchestrator has one."""
    secrets = {ctx.config.hf_token_env: os.environ.get(ctx.config.hf_token_env)}
    tracking = ctx.config.tracking
    if tracking is not None:
        secrets[WANDB_KEY_VARIABLE] = os.environ.get(tracking.wandb_key_env)
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in secrets.items() if value)


def _upload_dir(ssh: SSHSession, local: Path, remote: str) -> None:
    """Upload a directory next to `remote`, then rename it into place."""
    staging = f"{remote}.partial"
    ssh.run(f"rm -rf {shlex.quote(staging)}", check=True)
    ssh.makedirs(staging)
    for path in sorted(local.rglob("*")):
        target = posixpath.join(staging, *path.relative_to(local).parts)
        if path.is_dir():
            ssh.makedirs(target)
        else:
            ssh.put(path, target)
    ssh.run(
        f"rm -rf {shlex.quote(remote)} && mv {shlex.quote(staging)} {shlex.quote(remote)}",
        check=True,
    )


def _local_cpu_threads(ctx: StageContext) -> int:
    """Local instances share this machine's cores: oversubscribed BLAS threads made a tiny job
    train ~4x slower with three jobs on two cores, and two threads spinning on a busy machine
    took twice the CPU of one for the same steps."""
    if ctx.settings.local_cpu_threads is not None:
        return ctx.settings.local_cpu_threads
    jobs = len(ctx.store.sweep(ctx.ref.sweep_id).job_ids)
    return max(1, (os.cpu_count() or 1) // jobs)


def _start_script(
    ctx: StageContext, instance: InstanceRecord, layout: RemoteLayout, remote_wheel: str
) -> str:
    q = shlex.quote
    hostname = worker_hostname(ctx.ref.job_id, ctx.ref.attempt, instance.instance_id)
    env = {
        "SAEFLEET_WORKER_ROLE": "gpu",
        "SAEFLEET_SERVICE_NAME": "gpu-worker",
        "SAEFLEET_REDIS_URL_FILE": layout.broker_url_file,
        "SAEFLEET_WORKDIR": layout.workdir,
        "SAEFLEET_HOME": posixpath.join(layout.workdir, "home"),
        "SAEFLEET_LOG_LEVEL": ctx.settings.log_level,
    }
    if instance_uploads(instance, ctx.settings):
        env[UPLOAD_ENV] = "1"
    channel = ctx.provider.notice_channel(layout.workdir)
    if channel is not None:
        poll = channel.model_copy(update={"poll_s": ctx.settings.notice_poll_s})
        env[CHANNEL_ENV] = poll.model_dump_json()
    install = ""
    if reuses_local_venv(instance, ctx.settings):
        env["PYTHONPATH"] = remote_wheel  # run exactly the uploaded code with this venv's deps
        # ... and this machine's caches, as its venv (a fresh matplotlib font cache costs ~10 s)
        env["MPLCONFIGDIR"] = str(ctx.settings.home / "cache" / "matplotlib")
        env["OMP_NUM_THREADS"] = str(_local_cpu_threads(ctx))
    else:
        marker, venv = q(remote_wheel + ".installed"), q(layout.venv)
        install = (
            f"if [ ! -f {marker} ]; then\n"
            f"  [ -x {venv}/bin/python ] || python3 -m venv --system-site-packages {venv}\n"
            f"  {venv}/bin/python -m pip install --quiet {q(remote_wheel)}\n"
            f"  touch {marker}\n"
            "fi\n"
        )
    exports = " ".join(f"{k}={q(v)}" for k, v in env.items())
    worker = worker_argv(
        [train_queue(instance.instance_id)],
        node=hostname,
        concurrency=1,
        log_level=ctx.settings.log_level,
        python=worker_python(instance, ctx.settings),
    )
    return (
        "#!/bin/sh\n# Written by saefleet's bootstrap: installs and runs the GPU-side worker.\n"
        f"set -eu\ncd {q(layout.workdir)}\n{install}"
        "set -a\n. ./secrets.env\nset +a\n"
        f"export {exports}\n"
        f"exec {' '.join(q(a) for a in worker)}\n"
    )


def _start_worker(ssh: SSHSession, layout: RemoteLayout) -> None:
    """Start the worker in its own session unless it already runs (idempotent)."""
    q = shlex.quote
    pid, log_file = q(layout.worker_pid), q(layout.worker_log)
    ssh.run(
        f"cd {q(layout.workdir)} && "
        f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then exit 0; fi; '
        f"setsid nohup sh {q(layout.start_script)} >> {log_file} 2>&1 < /dev/null & "
        f"echo $! > {pid}",
        check=True,
        timeout=30,
    )


def _check_worker(
    ctx: StageContext, instance: InstanceRecord, layout: RemoteLayout, waited: float
) -> None:
    """Fail with the worker's log when it died or never answered."""
    q = shlex.quote
    with open_ssh(instance, ctx.settings) as ssh:
        alive = ssh.run(f'kill -0 "$(cat {q(layout.worker_pid)})" 2>/dev/null').exit_status == 0
        if alive and waited < ctx.settings.worker_start_timeout_s:
            return
        tail = ssh.run(f"tail -n {LOG_TAIL_LINES} {q(layout.worker_log)}").stdout.strip()
    what = "exited during start-up" if not alive else f"did not answer within {waited:.0f}s"
    raise StageFailed(f"the GPU-side worker {what}; its log ends:\n{tail[-1500:]}")
