"""The Celery app: broker/result settings chosen so that a killed worker never stalls or loses
work, and the one routing table (queue names and which task goes where).

Control-plane tasks are short (waits are polls re-scheduled with `retry(countdown=...)`),
acknowledged late and restored from Redis within about a minute when their worker dies. The long
GPU-side `train_segment` is acknowledged on receipt: its loss is the watchdog's to handle
(fencing + resume), so no visibility timeout ever delivers a segment twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from queue_app import broker_patch
from queue_app.admission import hold_worker_if_drained
from queue_app.connection import get_store
from queue_app.logs import register_secret, set_log_context, setup_logging
from queue_app.settings import Settings, get_settings

# ---- the routing table --------------------------------------------------------------------------

CONTROL_QUEUE = "control"
WATCHDOG_QUEUE = "watchdog"
TRAIN_QUEUE_PREFIX = "train."
CONTROL_WORKER_QUEUES = (CONTROL_QUEUE, WATCHDOG_QUEUE)
"""What the control worker consumes: every queue but the instances' training queues."""
TRAIN_SEGMENT_TASK = "saefleet.train_segment"
WARM_UP_TASK = "saefleet.warm_up"
"""Sent by bootstrap to a new GPU-side worker: load the trainer before the first segment."""

# Task-name prefix -> queue. Training goes to the queue of the instance that runs it.
ROUTES: dict[str, str] = {
    "saefleet.stage.": CONTROL_QUEUE,
    "saefleet.sweep.": CONTROL_QUEUE,
    "saefleet.pack.": CONTROL_QUEUE,
    "saefleet.watchdog.": WATCHDOG_QUEUE,
    "saefleet.notice.": WATCHDOG_QUEUE,  # a noticed checkpoint's pull goes on through a drain
    "saefleet.noop.": CONTROL_QUEUE,
    "saefleet.notify.": CONTROL_QUEUE,
}

# Modules each kind of worker loads.
CONTROL_MODULES = ["jobs.stages", "jobs.sweep_tasks", "watchdog.tasks", "queue_app.notify"]
GPU_MODULES = ["jobs.training_task"]


def train_queue(instance_id: str) -> str:
    """The queue that the GPU-side worker on `instance_id` consumes."""
    return f"{TRAIN_QUEUE_PREFIX}{instance_id}"


def segment_task_id(job_id: str, attempt: int, segment: int) -> str:
    """The task id of a training segment: `supervise_training` sends it under this id and the
    watchdog revokes it by this id."""
    return f"seg-{job_id}-a{attempt}-{segment}"


def route_task(
    name: str, args: Any, kwargs: dict[str, Any], options: dict[str, Any], *_: Any, **__: Any
) -> dict[str, str] | None:
    """Celery router: the routing table above as a function."""
    if name in (TRAIN_SEGMENT_TASK, WARM_UP_TASK):
        return {"queue": train_queue(kwargs["instance_id"])}
    for prefix, queue in ROUTES.items():
        if name.startswith(prefix):
            return {"queue": queue}
    return None


# ---- the app ----------------------------------------------------------------------------------


def make_app(settings: Settings | None = None, role: str = "control") -> Celery:
    """A configured Celery app; `role` picks the task modules a worker of that kind loads."""
    settings = settings or get_settings()
    url = settings.broker_url
    register_secret(url)
    app = Celery(
        "saefleet",
        broker=url,
        backend=url,
        include=GPU_MODULES if role == "gpu" else CONTROL_MODULES,
    )
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        # The lock around a restore of unacknowledged messages lapses after this. A restore
        # takes milliseconds, but a Redis restart mid-restore (the AOF keeps the lock) left
        # kombu's default of 300 s with nothing redelivered for five minutes.
        "unacked_mutex_expire": 15,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=CONTROL_QUEUE,
        task_routes=(route_task,),
        task_create_missing_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport,
        result_backend_transport_options={"result_chord_ordered": True, **transport},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_expires=settings.result_expires_s,
        result_chord_expires=settings.result_expires_s,
        result_extended=True,
        # Per-task bookkeeping nobody reads costs more than a whole no-op task (see
        # BENCHMARKS.md): no STARTED state in the backend (two more Redis round trips), and
        # task events (up to four publishes) only while a monitor asks for them: Flower turns
        # them on in the workers it watches.
        task_track_started=False,
        task_send_sent_event=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app


broker_patch.apply()  # workers survive a lost Redis connection (see the module)
app = make_app(role=get_settings().worker_role)
log = logging.getLogger(__name__)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    settings = get_settings()
    setup_logging(settings.service_name, settings.logs_dir, settings.log_level)


@signals.task_prerun.connect
def _task_log_context(task: Any = None, args: Any = (), kwargs: Any = None, **_: Any) -> None:
    """Every record a task logs carries the job it works on."""
    ref = args[0] if args and isinstance(args[0], dict) else (kwargs or {})
    set_log_context(
        sweep=ref.get("sweep_id"),
        job=ref.get("job_id"),
        attempt=ref.get("attempt"),
        instance=ref.get("instance_id"),
    )


@signals.worker_ready.connect
def _hold_if_drained(sender: Any = None, **_: Any) -> None:
    """A worker that starts while the queue is drained consumes nothing until `--undo`."""
    hold_worker_if_drained(get_store().r, sender)
