"""`train_segment`: the one task the GPU-side worker runs (only that worker loads this module).

It trains for at most `segment_minutes` (or until done, or told to stop), writes a checkpoint,
hands it to the background uploader (jobs.checkpoint_upload) when the instance reaches the store,
and records the outcome in the attempt record for `supervise_training`. A resumed attempt's first
segment downloads its checkpoint from the store (jobs.checkpoint_restore). The LM and data
stream stay cached in this worker process between segments. It is acknowledged on receipt: a
segment lost with its instance is recovered by the watchdog (fencing + resume), never by
redelivery. A pack job's segment trains all its members at once (jobs.pack_training).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Task
from celery.signals import worker_process_init

from jobs.checkpoint_restore import restore_checkpoint
from jobs.checkpoint_upload import upload_in_background, uploads_from_here
from jobs.notice_watch import stop_for_notice, watch_notices
from jobs.oom import record_halving
from jobs.pack_training import injected_oom, train_pack_segment, with_halvings
from jobs.remote import RemoteLayout
from jobs.tracking import PackTracker, RunTracker
from jobs.upload_board import UploadBoard
from queue_app.celery_app import TRAIN_SEGMENT_TASK, WARM_UP_TASK, app
from queue_app.connection import get_store
from queue_app.errors import StaleAttempt
from queue_app.jobspec import JobConfig
from queue_app.logs import log_context, redact
from queue_app.pack_mirror import following_members
from queue_app.statemachine import JobState, SegmentStatus
from queue_app.store import Store
from sae.errors import OutOfMemory

if TYPE_CHECKING:
    from sae.run import TrainingRun

log = logging.getLogger(__name__)

TRAINER_MODULE = "sae.run"  # torch, transformers, datasets: seconds of imports
YOUNG_GC_THRESHOLD = 10_000
"""Allocations between the pool process's young-generation collections (Python's default is
700). The trainer's imports and LM load create millions of objects that all live on, and
collecting every 700 of them cost ~15% of the start-up (about 0.8 s of CPU on the tiny LM)."""
STOP_CHECK_INTERVAL_S = 2.0
FINISH_RETRY_S = 10 * 60.0
_runs: dict[tuple[str, int], TrainingRun] = {}
_warmed: set[tuple[str, int]] = set()
"""Runs built by `warm_up`, before their checkpoint was placed: restored at the first segment."""


class RunControl:
    """The trainer's view of the fleet: the stop flag (read at most every 2 s) and progress.

    `should_stop` is true once the watchdog or a user asked the job to stop, once this
    attempt is no longer the job's attempt (the job was resumed elsewhere), and at once when
    the instance gets an interruption notice or a rebalance recommendation (jobs.notice_watch)."""

    def __init__(self, store: Store, job_id: str, attempt: int) -> None:
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self._checked = 0.0
        self._stop = False

    def should_stop(self) -> bool:
        if stop_for_notice():
            self._stop = True
        now = time.monotonic()
        if not self._stop and now - self._checked >= STOP_CHECK_INTERVAL_S:
            self._checked = now
            job = self.store.job(self.job_id)
            self._stop = (
                job.attempt != self.attempt
                or bool(job.stop_requested)
                or job.state is JobState.PREEMPTING
            )
        return self._stop

    def on_progress(self, progress: dict[str, Any]) -> None:
        """Record the trainer's progress (the trainer already reports every few seconds)."""
        try:
            self.store.update_job(
                self.job_id, self.attempt, progress={**progress, "updated_at": time.time()}
            )
        except StaleAttempt:
            self._stop = True


def _job_config(workdir: Path) -> JobConfig:
    """The job's config as bootstrap uploaded it."""
    return JobConfig.model_validate_json((workdir / "job.json").read_text())


def _training_run(store: Store, job_id: str, attempt: int, workdir: Path) -> TrainingRun:
    """This attempt's run, built once per worker process: by `warm_up` (then its checkpoint,
    placed since, is restored here) or here."""
    key = (job_id, attempt)
    if key not in _runs or key in _warmed:
        restore_checkpoint(
            Path(RemoteLayout(str(workdir)).restore_plan), workdir / "run" / "checkpoints"
        )
    if key in _warmed:
        _warmed.discard(key)
        if any((workdir / "run" / "checkpoints").glob("*")):
            _runs[key].restore()  # the LM stays loaded: only the SAE and stream are rebuilt
    if key not in _runs:
        _runs.clear()  # one job per instance: drop anything older
        _warmed.clear()
        _runs[key] = _new_run(store, job_id, workdir)
    return _runs[key]


def _new_run(store: Store, job_id: str, workdir: Path) -> TrainingRun:
    """The job's run as uploaded, with the halvings it has kept (jobs.oom) and any injected
    out-of-memory fault."""
    from sae.run import TrainingRun

    config = with_halvings(_job_config(workdir).run_config(), store.job(job_id))
    return TrainingRun(config, workdir / "run", inject_oom=injected_oom(workdir))


@worker_process_init.connect
def import_trainer_in_background(**_: Any) -> threading.Thread:
    """Start importing the trainer the moment the worker's pool process forks, while the worker
    itself still starts up and bootstrap waits for its answer: `warm_up`'s own import then
    finds the modules loaded, or waits for the rest (Python's import lock), instead of
    starting from nothing. A failure is left for `warm_up` or the first segment to report."""
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    thread = threading.Thread(target=_import_trainer, name="import-trainer", daemon=True)
    thread.start()
    return thread


def _import_trainer() -> None:
    try:
        importlib.import_module(TRAINER_MODULE)
    except Exception:
        log.warning("importing the trainer ahead of warm_up failed", exc_info=True)


@app.task(name=WARM_UP_TASK, acks_late=False, reject_on_worker_lost=False, ignore_result=True)
def warm_up(job_id: str, attempt: int, instance_id: str) -> None:
    """Import the trainer and load the LM, the held-out data and the validation activations
    while bootstrap still waits for the checkpoint to resume from (the first segment only
    restores it). A pack job's worker only imports the trainer: its run is built from the
    members' checkpoints once they are placed (jobs.pack_training). It also starts the watch
    for interruption notices, so a notice that comes while bootstrap still runs is read. A
    failure here is logged and left to the first segment to report."""
    workdir = Path(os.environ["SAEFLEET_WORKDIR"])
    key = (job_id, attempt)
    store = get_store()
    with log_context(job=job_id, attempt=attempt, instance=instance_id):
        watch_notices(store, job_id, attempt)
        started = time.monotonic()
        try:
            if store.job(job_id).members:
                import sae.pack  # noqa: F401  (torch, transformers, datasets)

                return
            _runs.clear()
            _warmed.clear()
            _runs[key] = _new_run(store, job_id, workdir)
        except Exception:
            log.exception("warming up failed; the first segment builds the run again")
            return
        _warmed.add(key)
        log.info("trainer warmed up in %.1fs", time.monotonic() - started)


@app.task(
    bind=True,
    name=TRAIN_SEGMENT_TASK,
    acks_late=False,
    reject_on_worker_lost=False,
    ignore_result=True,
)
def train_segment(task: Task, job_id: str, attempt: int, segment: int, instance_id: str) -> None:
    """Train one segment of `job_id`'s `attempt` and record its checkpoint."""
    store = get_store()
    workdir = Path(os.environ["SAEFLEET_WORKDIR"])
    with log_context(job=job_id, attempt=attempt, instance=instance_id):
        try:
            if not store.start_segment(job_id, attempt, segment, runner=uuid.uuid4().hex):
                log.info("segment %d: duplicate or late message; ignored", segment)
                return
        except StaleAttempt:
            log.info("segment %d belongs to a stale attempt; ignored", segment)
            return
        watch_notices(store, job_id, attempt)
        config = _job_config(workdir)
        control = RunControl(store, job_id, attempt)
        tracker = _tracker(config, store, job_id, attempt, workdir)

        def on_progress(progress: dict[str, Any]) -> None:
            control.on_progress(progress)
            if tracker is not None:
                tracker.log_progress(progress)

        try:
            if store.job(job_id).members:
                outcome = _train_pack(store, job_id, attempt, workdir, config, control)
                if uploads_from_here():
                    _upload_member_checkpoints(store, attempt, segment, workdir, outcome)
                _finish(store, job_id, attempt, segment, SegmentStatus.DONE, **outcome)
                log.info("pack segment %d done: %s", segment, outcome["member_outcomes"])
                return
            run = _training_run(store, job_id, attempt, workdir)
            result = run.train(
                max_seconds=config.segment_minutes * 60,
                should_stop=control.should_stop,
                on_progress=on_progress,
                heartbeat_path=workdir / "run" / "heartbeat.json",
                on_oom=lambda restart: record_halving(store, job_id, attempt, restart),
            )
        except Exception as exc:
            if tracker is not None:
                tracker.finish()
            log.exception("segment %d failed", segment)
            _finish(
                store,
                job_id,
                attempt,
                segment,
                SegmentStatus.FAILED,
                segment_error=redact(f"{type(exc).__name__}: {exc}")[:2000],
                segment_out_of_memory=isinstance(exc, OutOfMemory),
            )
            return
        if tracker is not None:
            tracker.finish(result.metrics.get("evals") if result.done else None)
        checkpoint = Path(result.checkpoint).resolve().relative_to((workdir / "run").resolve())
        if uploads_from_here():  # in the background: the next segment does not wait for it
            outbox = Path(RemoteLayout(str(workdir)).upload_outbox)
            board = UploadBoard(store.r, job_id, attempt)
            upload_in_background(board, segment, Path(result.checkpoint), outbox)
        _finish(
            store,
            job_id,
            attempt,
            segment,
            SegmentStatus.DONE,
            segment_checkpoint=checkpoint.as_posix(),
            segment_done=result.done,
            segment_stopped=result.stopped and not result.done,
        )
        log.info(
            "segment %d done at step %d (%s)",
            segment,
            result.step,
            "finished" if result.done else "stopped" if result.stopped else "time up",
        )


def _train_pack(
    store: Store, job_id: str, attempt: int, workdir: Path, config: JobConfig, control: RunControl
) -> dict[str, Any]:
    """One segment of a pack job (jobs.pack_training); each tracked member logs to its own W&B
    run. Returns the segment's outcome fields."""
    members = store.jobs(following_members(store, job_id, attempt))
    tracker = PackTracker.open(members, attempt, workdir)
    outcome: dict[str, Any] = {}
    try:
        outcome = train_pack_segment(
            store,
            job_id,
            attempt,
            workdir,
            config.segment_minutes * 60,
            control.should_stop,
            control.on_progress,
            tracker.log_progress,
        )
    finally:
        tracker.finish(_final_evals(workdir, outcome.get("member_outcomes", {})))
    return outcome


def _final_evals(workdir: Path, outcomes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The final evals of each member that finished (its `final/metrics.json`)."""
    evals = {}
    for member, outcome in outcomes.items():
        metrics = workdir / "run" / member / "final" / "metrics.json"
        if outcome.get("done") and metrics.is_file():
            evals[member] = json.loads(metrics.read_text()).get("evals", {})
    return evals


def _upload_member_checkpoints(
    store: Store, attempt: int, segment: int, workdir: Path, outcome: dict[str, Any]
) -> None:
    """Each pack member's checkpoint goes to the store in the background, on the member's own
    upload board (all of the segment's at one stream position)."""
    outbox = Path(RemoteLayout(str(workdir)).upload_outbox)
    for member, member_outcome in outcome["member_outcomes"].items():
        if member_outcome["checkpoint"]:
            board = UploadBoard(store.r, member, attempt)
            checkpoint = workdir / "run" / member_outcome["checkpoint"]
            upload_in_background(board, segment, checkpoint, outbox / member)


def _tracker(
    config: JobConfig, store: Store, job_id: str, attempt: int, workdir: Path
) -> RunTracker | None:
    """The job's W&B run for this segment, when the job is tracked."""
    if config.tracking is None or store.job(job_id).members:
        return None  # a pack job: its members are tracked, each its own run (_train_pack)
    return RunTracker.open(config.tracking, config, store.job(job_id), attempt, workdir)


def _finish(
    store: Store, job_id: str, attempt: int, segment: int, status: SegmentStatus, **fields: Any
) -> None:
    """Record the segment's outcome, riding out a Redis outage (e.g. the SSH tunnel being
    re-established) for up to FINISH_RETRY_S, because only this record tells the supervisor
    that the checkpoint on disk is ready to pull."""
    deadline = time.monotonic() + FINISH_RETRY_S
    delay = 1.0
    while True:
        try:
            store.finish_segment(job_id, attempt, segment, status, **fields)
            return
        except StaleAttempt:
            log.info("segment %d finished after its attempt went stale", segment)
            return
        except redis.exceptions.ConnectionError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("recording segment %d: %s; retrying in %.0fs", segment, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
