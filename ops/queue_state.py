"""What the queue holds right now, as data and as tables (`saefleet queue drain --status`):
the workers and the queues each consumes, their active, reserved and scheduled tasks, the messages
waiting in Redis per queue, and each unfinished job's way to costing nothing while drained."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.table import Table

from queue_app.admission import drain_state
from queue_app.errors import NotFoundError
from queue_app.records import AttemptRecord
from queue_app.settings import Settings
from queue_app.statemachine import INSTANCE_STATES, JobState
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
WITH_ATTEMPT = INSTANCE_STATES | {JobState.COLLECTING, JobState.TERMINATING, JobState.PAUSED}


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


def job_ways(store: Store) -> list[dict[str, Any]]:
    """Each unfinished job: its state, segment, newest checkpoint kept, and its way to costing
    nothing while the queue is drained (or what it does, when it is not)."""
    drained = drain_state(store.r) is not None
    out = []
    for job in store.jobs(store.job_ids()):
        if job.terminal:
            continue
        record = store.attempt(job.job_id, job.attempt) if job.state in WITH_ATTEMPT else None
        out.append(
            {
                "job_id": job.job_id,
                "state": str(job.state),
                "attempt": job.attempt,
                "instance_id": record.instance_id if record else None,
                "segment": record.segment if record else 0,
                "segment_status": record.segment_status if record else None,
                "pulled_segment": record.pulled_segment if record else 0,
                "checkpoint": job.latest_checkpoint,
                "way": job_way(job.state, record, drained),
            }
        )
    return out


NO_COST_WAYS = {
    JobState.PAUSED: "paused at no cost; --undo resumes it from its checkpoint",
    JobState.QUEUED: "waits in the queue at no cost",
    JobState.PREEMPTED: "waits in the queue at no cost",
    JobState.TERMINATING: "collected; its instance is terminated, then the job ends",
}


def job_way(state: JobState, record: AttemptRecord | None, drained: bool) -> str:
    """Where a job stands on its way to a drained, no-cost state (see watchdog.drain)."""
    if state in NO_COST_WAYS or not drained or record is None:
        return NO_COST_WAYS.get(state, "running")
    if state is not JobState.TRAINING:
        return "pausing: nothing trained yet; its instance is terminated"
    if record.segment_status == "running":
        return f"segment {record.segment} checkpoints at its next step"
    if record.segment_status == "done" and record.pulled_segment < record.segment:
        return f"pulling segment {record.segment}'s checkpoint, then pausing"
    return "pausing: checkpoint kept; its instance is terminated"


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
        "jobs": job_ways(store),
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
    jobs = Table(title="jobs: the way to costing nothing")
    for column in ("job", "state", "att", "segment", "checkpoint", "way"):
        jobs.add_column(column, overflow="fold")
    for j in snap["jobs"]:
        segment = f"{j['segment']} {j['segment_status'] or ''}".strip() if j["segment"] else "-"
        jobs.add_row(
            j["job_id"], j["state"], str(j["attempt"]), segment, j["checkpoint"] or "-", j["way"]
        )
    return [head, workers, queues, jobs]
