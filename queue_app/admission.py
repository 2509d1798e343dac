"""Whether the fleet admits new work: the drained flag in Redis.

`ops/drain` (and `ops/teardown`) set it; `submit_sweep` refuses new sweeps while it is set; a
Celery worker that starts while the queue is drained stops consuming at once (so a restart
during a drain does not resume work behind the operator's back); no stage launches an instance
or starts a training segment while it is set. `--undo` clears it.

    sf:admission:drained    hash   since, by (drain | teardown), workers (JSON: node -> the
                                   queues it stopped consuming), keep (JSON: queues left consumed)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from queue_app.errors import QueueError

log = logging.getLogger(__name__)

DRAINED_KEY = "sf:admission:drained"
# The stop flag (JobRecord.stop_requested) a drain gives training jobs: checkpoint at the next
# step, and the watchdog's drain step pauses the job once its checkpoint is pulled.
PAUSE_REQUEST = "pause"


@dataclass(frozen=True)
class DrainState:
    """What the drained flag says: since when, set by which operation, and the queues each
    worker consumed when it was drained (what `--undo` gives back to it)."""

    since: float
    by: str
    workers: dict[str, list[str]] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)


class QueueDrained(QueueError):
    """New work is refused while the queue is drained (the CLI prints the message and exits 1)."""

    def __init__(self, state: DrainState) -> None:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.since))
        super().__init__(
            f"the queue is drained (by {state.by}, since {since}): new sweeps are refused; "
            "resume with `saefleet queue drain --undo` (or `ops/drain --undo`)"
        )
        self.state = state


def drain_state(r: redis.Redis) -> DrainState | None:
    """The drained flag, or None when the fleet admits work."""
    raw = r.hgetall(DRAINED_KEY)
    if not raw:
        return None
    return DrainState(
        since=float(raw["since"]),
        by=raw.get("by", "drain"),
        workers=json.loads(raw.get("workers", "{}")),
        keep=json.loads(raw.get("keep", "[]")),
    )


def set_drained(
    r: redis.Redis, by: str, workers: dict[str, list[str]], keep: list[str] | None = None
) -> DrainState:
    """Raise the flag. A repeat keeps the first `since` and adds to each worker's queues (a
    second drain sees drained workers consuming nothing and must not forget what they had)."""
    current = drain_state(r)
    merged = {node: list(queues) for node, queues in (current.workers if current else {}).items()}
    for node, queues in workers.items():
        merged[node] = sorted(set(merged.get(node, [])) | set(queues))
    kept = sorted(keep if keep is not None else (current.keep if current else []))
    state = DrainState(
        since=current.since if current else time.time(), by=by, workers=merged, keep=kept
    )
    r.hset(
        DRAINED_KEY,
        mapping={
            "since": repr(state.since),
            "by": by,
            "workers": json.dumps(merged),
            "keep": json.dumps(kept),
        },
    )
    return state


def clear_drained(r: redis.Redis) -> DrainState | None:
    """Lower the flag; returns what it said (None when it was not set)."""
    state = drain_state(r)
    r.delete(DRAINED_KEY)
    return state


def check_admits_work(r: redis.Redis) -> None:
    """QueueDrained when the fleet is drained."""
    state = drain_state(r)
    if state is not None:
        raise QueueDrained(state)


def hold_worker_if_drained(r: redis.Redis, consumer: Any) -> list[str]:
    """Called when a Celery worker is ready: while the queue is drained, it stops consuming
    its work queues at once (they are recorded for `--undo`); returns the queues it dropped."""
    state = drain_state(r)
    if state is None:
        return []
    queues = [q.name for q in consumer.task_consumer.queues if q.name not in state.keep]
    set_drained(r, state.by, {consumer.hostname: queues})
    for queue in queues:
        consumer.cancel_task_queue(queue)
    log.warning(
        "the queue is drained (by %s): not consuming %s until `saefleet queue drain --undo`",
        state.by,
        ", ".join(queues),
    )
    return queues
