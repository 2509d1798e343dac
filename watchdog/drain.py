"""The drain step: while the queue is drained by `queue drain`, every job that holds an instance
is brought to PAUSED at no cost, without losing a trained step.

- training: the job gets the stop flag `pause` (training checkpoints at its next step); once no
  segment runs, the finished segment's checkpoint is pulled into the store and verified (the one
  pull function `supervise_training` uses: its own message waits in the drained control queue;
  a pack's, every member's checkpoint, jobs.pack_checkpoints; the members pause with the pack),
  then its worker log is copied to the artifact store, the job is paused and its instance
  terminated (watchdog.actions.pause);
- provisioning, booting, verifying, bootstrapping: nothing has trained yet: paused at once;
- terminating (collected, its `terminate` stage waits in the drained queue): its instance is
  terminated now, the job stays TERMINATING until `--undo`.

It runs in every watchdog tick, because the watchdog queue stays consumed during a drain, so
the work goes on after `queue drain` has returned and across control-worker restarts;
`queue drain` and `--wait` also run it in their own process so as not to wait for a tick. Every
action is idempotent and fenced, so two runs at once do no harm (one pulls, the other waits).
"""

from __future__ import annotations

from jobs.checkpoint_pull import CheckpointNotKept, pull_segment_checkpoint
from jobs.collect import fetch_worker_log
from jobs.instances import open_ssh
from jobs.objectstore import StoreError
from jobs.pack_checkpoints import keep_pack_checkpoints
from jobs.remote import layout_for
from jobs.ssh import SSHError
from queue_app.admission import PAUSE_REQUEST, drain_state
from queue_app.errors import StaleAttempt
from queue_app.records import AttemptRecord, JobRecord
from queue_app.statemachine import INSTANCE_STATES, JobState
from watchdog.actions import pause, terminate_instance
from watchdog.context import TickContext
from watchdog.fleet import Fleet, Tracked

CHECK = "drain"
DRAINED_BY = "drain"  # teardown raises the flag too, and ends the jobs itself
LOG_SSH_TIMEOUT_S = 5.0


def check_drain(ctx: TickContext, fleet: Fleet, skip: set[str]) -> set[str]:
    """While drained: pause what can be paused now; returns the instance ids it released."""
    state = drain_state(ctx.store.r)
    if state is None or state.by != DRAINED_BY:
        return set()
    released: set[str] = set()
    for tracked in fleet.tracked:
        job, instance = tracked.job, tracked.instance
        current = job is not None and job.attempt == instance.attempt
        if job is None or not current or instance.instance_id in skip:
            continue
        if job.state is JobState.TERMINATING and not tracked.terminate_requested:
            why = "drained: the job is collected; its terminate stage runs after --undo"
            terminate_instance(ctx, CHECK, tracked, why)
            released.add(instance.instance_id)
        elif job.state in INSTANCE_STATES and _settled(ctx, tracked):
            _keep_worker_log(ctx, tracked)
            if pause(ctx, CHECK, tracked, "drained (queue drain)"):
                released.add(instance.instance_id)
    return released


def _settled(ctx: TickContext, tracked: Tracked) -> bool:
    """Whether the job can be paused now without losing a trained step: it was asked to pause,
    nothing trains on its instance, and the last finished segment's checkpoint is in the store
    (pulled whatever the stop flag, so a cost cap ending the job during a drain keeps it too)."""
    job, record = tracked.job, tracked.attempt
    if job is None or job.state is not JobState.TRAINING or record is None:
        return True
    asked = _stop_requested(ctx, job, record.attempt)
    if record.segment_status == "running":
        return False
    if record.segment_status == "done" and record.pulled_segment < record.segment:
        pulled = _pulled(ctx, job, tracked, record)
        return asked and pulled
    return asked


def _pulled(ctx: TickContext, job: JobRecord, tracked: Tracked, record: AttemptRecord) -> bool:
    """Pull the finished segment's checkpoint (a pack's: every member's); True once it is kept
    (or cannot ever be)."""
    try:
        if job.members:
            return _pack_pulled(ctx, job, tracked, record)
        return pull_segment_checkpoint(ctx.store, ctx.settings, job, tracked.instance, record)
    except CheckpointNotKept as exc:  # pulling again cannot help: pause with the one before
        ctx.report.error(CHECK, job.job_id, f"segment {record.segment} is lost: {exc}")
        return True
    except (SSHError, StoreError, StaleAttempt) as exc:
        ctx.report.error(CHECK, job.job_id, f"cannot pull segment {record.segment}: {exc}")
        return False


def _pack_pulled(
    ctx: TickContext, pack: JobRecord, tracked: Tracked, record: AttemptRecord
) -> bool:
    """Every member's checkpoint of the segment kept (jobs.pack_checkpoints); a member whose
    one cannot be is reported and pauses with its previous checkpoint, as a single job does."""
    checkpoints = keep_pack_checkpoints(ctx.store, ctx.settings, pack, tracked.instance, record)
    if checkpoints.settled:
        for member_id, why in checkpoints.lost.items():
            ctx.report.error(CHECK, member_id, f"segment {record.segment} is lost: {why}")
    return checkpoints.settled


def _keep_worker_log(ctx: TickContext, tracked: Tracked) -> None:
    """A training job's worker log goes to the artifact store before its instance does."""
    job, instance = tracked.job, tracked.instance
    if job is None or job.state is not JobState.TRAINING:
        return
    try:
        with open_ssh(instance, ctx.settings, timeout=LOG_SSH_TIMEOUT_S) as ssh:
            layout = layout_for(instance)
            fetch_worker_log(ssh, layout, ctx.settings, job.sweep_id, job.job_id, instance.attempt)
    except (SSHError, ValueError) as exc:
        ctx.report.error(CHECK, job.job_id, f"worker log not kept: {exc}")


def _stop_requested(ctx: TickContext, job: JobRecord, attempt: int) -> bool:
    """Ask training to checkpoint at its next step (True once asked); False when a cost cap or
    a cancel is ending the job already, or it moved on."""
    if job.stop_requested == PAUSE_REQUEST:
        return True
    if job.stop_requested:
        return False
    try:
        ctx.store.update_job(job.job_id, attempt, stop_requested=PAUSE_REQUEST)
    except StaleAttempt:
        return False
    ctx.report.add(CHECK, "stop-requested", job.job_id, "drained: checkpoint at the next step")
    return True
