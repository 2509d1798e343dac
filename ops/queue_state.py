"""What the queue holds right now, as data and as tables (`saefleet queue drain --status`):
the workers and the queues each consumes, their active, reserved and scheduled tasks, the messages
waiting in Redis per queue, and where each training job's segment stands."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.table import Table

from queue_app.admission import drain_state
from queue_app.errors import NotFoundError
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store

if TYPE_CHECKING:
    from celery import Celery

DISCOVER_TIMEOUT_S = 1.5  # how long to wait for workers to answer a broadcast
INSPECT_TIMEOUT_S = 10.0  # ... and for the ones known to answer (a busy GPU host is slow)
PIDBOX_SUFFIX = ".pidbox"  # Celery's broadcast mailboxes, not task queues
KOMBU_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
KOMBU_BINDING_PREFIX = "_kombu.binding."
KOMBU_UNACKED = "unacked"
WORKER_STATES = frozenset({JobState.BOOTSTRAPPING, JobState.TRAINING, JobState.COLLECTING})


def celery_app(settings: Settings) -> Celery:
    from queue_app.celery_app import make_app

    return make_app(settings)


def worker_queues(app: Celery) -> dict[str, list[str]]:
    """Node name -> the task queues it consumes now (every worker that answered)."""
    replies = app.control.inspect(timeout=DISCOVER_TIMEOUT_S).active_queues() or {}
    return {node: sorted(q["name"] for q in queues) for node, queues in replies.items()}


def inspect_nodes(app: Celery, nodes: list[str], method: str) -> dict[str, Any]:
    """`inspect <method>` of known nodes: returns as soon as each has replied."""
    if not nodes:
        return {}
    inspect = app.control.inspect(destination=nodes, limit=len(nodes), timeout=INSPECT_TIMEOUT_S)
    return getattr(inspect, method)() or {}


def pending_messages(store: Store) -> dict[str, int]:
    """Queue name -> messages waiting in Redis (every priority level), for every queue kombu
    has declared."""
    names = sorted(
        name
        for key in store.r.scan_iter(match=f"{KOMBU_BINDING_PREFIX}*", count=500)
        if not (name := key.removeprefix(KOMBU_BINDING_PREFIX)).endswith(PIDBOX_SUFFIX)
    )
    with store.r.pipeline(transaction=False) as pipe:
        for name in names:
            for suffix in KOMBU_PRIORITY_SUFFIXES:
                pipe.llen(f"{name}{suffix}")
        lengths = pipe.execute()
    steps = len(KOMBU_PRIORITY_SUFFIXES)
    return {name: sum(lengths[i * steps : (i + 1) * steps]) for i, name in enumerate(names)}


def training_segments(store: Store) -> list[dict[str, Any]]:
    """The segment each TRAINING job's live attempt is on, and where that segment stands."""
    jobs = [j for j in store.jobs(store.job_ids()) if j.state is JobState.TRAINING]
    out = []
    for job in jobs:
        attempt = store.attempt(job.job_id, job.attempt)
        out.append(
            {
                "job_id": job.job_id,
                "attempt": job.attempt,
                "instance_id": attempt.instance_id,
                "segment": attempt.segment,
                "segment_status": attempt.segment_status,
                "pulled_segment": attempt.pulled_segment,
            }
        )
    return out


def snapshot(app: Celery, store: Store, nodes: list[str] | None = None) -> dict[str, Any]:
    """Workers (queues, active/reserved/scheduled tasks), pending and unacked messages, training
    segments and the drained flag, as plain data. `nodes`: the workers when already known."""
    if nodes is None:
        queues = worker_queues(app)
        nodes = sorted(queues)
    else:
        replies = inspect_nodes(app, nodes, "active_queues")
        queues = {node: sorted(q["name"] for q in qs) for node, qs in replies.items()}
    active = inspect_nodes(app, nodes, "active")
    reserved = inspect_nodes(app, nodes, "reserved")
    scheduled = inspect_nodes(app, nodes, "scheduled")
    workers = {
        node: {
            "queues": queues.get(node, []),
            "active": [_task_summary(t) for t in active.get(node, [])],
            "reserved": len(reserved.get(node, [])),
            "scheduled": len(scheduled.get(node, [])),
        }
        for node in sorted(set(queues) | set(active))
    }
    state = drain_state(store.r)
    return {
        "drained": asdict(state) if state else None,
        "workers": workers,
        "pending": pending_messages(store),
        "unacked": int(store.r.hlen(KOMBU_UNACKED)),
        "training": training_segments(store),
    }


def _task_summary(task: dict[str, Any]) -> dict[str, Any]:
    """A task as `inspect active` reports it, cut to what identifies it (ids only)."""
    ref = task.get("args") or [{}]
    ref = ref[0] if isinstance(ref[0], dict) else {}
    kwargs = task.get("kwargs") or {}
    return {
        "id": task.get("id"),
        "name": task.get("name"),
        "job_id": ref.get("job_id") or kwargs.get("job_id"),
        "attempt": ref.get("attempt") or kwargs.get("attempt"),
    }


def in_flight(snap: dict[str, Any]) -> list[str]:
    """What is still running: active tasks and training segments mid-way."""
    running = [
        f"{task['name']} ({task['job_id'] or task['id']}) on {node}"
        for node, worker in snap["workers"].items()
        for task in worker["active"]
    ]
    running += [
        f"segment {s['segment']} of {s['job_id']} on {s['instance_id']}"
        for s in snap["training"]
        if s["segment_status"] == "running"
    ]
    return running


def expected_gpu_workers(store: Store) -> dict[str, list[str]]:
    """Node -> [its training queue] for the GPU-side worker each live instance should run (a
    worker deep in a training step may miss the discovery broadcast's short timeout)."""
    from jobs.remote import worker_hostname
    from queue_app.celery_app import train_queue

    out = {}
    for instance in store.instances(live_only=True):
        try:
            job = store.job(instance.job_id)
        except NotFoundError:
            continue
        if job.attempt == instance.attempt and job.state in WORKER_STATES:
            node = worker_hostname(job.job_id, job.attempt, instance.instance_id)
            out[node] = [train_queue(instance.instance_id)]
    return out


# ---- human output --------------------------------------------------------------------------------


def status_tables(snap: dict[str, Any]) -> list[Table | str]:
    drained = snap["drained"]
    head = (
        f"drained by {drained['by']} since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(drained['since']))}"
        if drained
        else "not drained: new sweeps are admitted"
    )
    workers = Table(title="workers")
    for column in ("worker", "consuming", "active", "reserved", "scheduled"):
        workers.add_column(column, overflow="fold")
    for node, w in snap["workers"].items():
        active = ", ".join(f"{t['name']} {t['job_id'] or ''}".strip() for t in w["active"])
        workers.add_row(
            node,
            ", ".join(w["queues"]) or "-",
            active or "-",
            str(w["reserved"]),
            str(w["scheduled"]),
        )
    queues = Table(title=f"queued in Redis ({snap['unacked']} reserved/unacked)")
    queues.add_column("queue")
    queues.add_column("pending", justify="right")
    for name, count in snap["pending"].items():
        queues.add_row(name, str(count))
    training = Table(title="training segments")
    for column in ("job", "att", "instance", "segment", "status", "pulled"):
        training.add_column(column)
    for s in snap["training"]:
        training.add_row(
            s["job_id"],
            str(s["attempt"]),
            s["instance_id"] or "-",
            str(s["segment"]),
            s["segment_status"] or "-",
            str(s["pulled_segment"]),
        )
    return [head, workers, queues, training]
