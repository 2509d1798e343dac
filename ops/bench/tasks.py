"""The no-op tasks the queue benchmark runs, on both sides of the comparison.

- `plain_app`: a bare Celery app (defaults, JSON) whose one task does nothing; its worker
  consumes `bench.plain`.
- `saefleet.noop.*`: stages on saefleet's own app, registered through `jobs.stage_base` exactly
  as the lifecycle stages are (fencing, the state compare-and-set, routing by the table in
  `queue_app.celery_app`), with bodies that only advance the job one state: stage i moves it to
  the i-th state of the success path, as the real chain does with a provider and training.

The benchmark's workers load this module (`celery -A ops.bench.tasks:plain_app` and
`... :app`); both apps read the Redis URL from `SAEFLEET_REDIS_URL`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from jobs.pipeline import SUCCESS_PATH
from jobs.stage_base import StageContext, stage_task
from queue_app.celery_app import app
from queue_app.connection import get_store
from queue_app.settings import get_settings
from queue_app.statemachine import JobState

PLAIN_QUEUE = "bench.plain"
NOOP_PREFIX = "saefleet.noop."
TARGETS = SUCCESS_PATH[1:]  # the states the no-op stages move a QUEUED job through, in order

_url = get_settings().broker_url
plain_app = Celery("bench-plain", broker=_url, backend=_url)
plain_app.conf.update(task_default_queue=PLAIN_QUEUE, worker_hijack_root_logger=False)


@plain_app.task(name="bench.plain.noop")
def plain_noop(*_: Any) -> None:
    """Nothing at all."""


def _advance_to(target: JobState) -> Callable[[StageContext], None]:
    def body(ctx: StageContext) -> None:
        ctx.advance(target)

    body.__doc__ = f"Move the job to {target} and do nothing else."
    return body


NOOP_STAGES: tuple[Task, ...] = tuple(
    stage_task(f"{NOOP_PREFIX}stage{i}", f"noop{i}", keeps_result=i == len(TARGETS))(
        _advance_to(target)
    )
    for i, target in enumerate(TARGETS, 1)
)

# A chord header, like a job chain's last stage (`terminate`), stores its result.
NOOP_HEADER: Task = stage_task(f"{NOOP_PREFIX}header", "noop_header", keeps_result=True)(
    _advance_to(TARGETS[0])
)


@app.task(name=f"{NOOP_PREFIX}finalize")
def noop_finalize(results: list[dict[str, Any]], sweep_id: str) -> int:
    """The chord body: count the finalize run on the sweep record, as finalize_sweep does."""
    return get_store().finish_sweep(sweep_id, f"{len(results)} results")


__all__ = ["NOOP_HEADER", "NOOP_STAGES", "app", "noop_finalize", "plain_app", "plain_noop"]
