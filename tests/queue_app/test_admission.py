"""The drained flag: set, merged, cleared; submission refused while it is set; a worker that
starts while drained drops its work queues."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from jobs.spec import SweepSpec
from jobs.submission import submit_sweep
from queue_app.admission import (
    QueueDrained,
    check_admits_work,
    clear_drained,
    drain_state,
    hold_worker_if_drained,
    set_drained,
)
from queue_app.state import Store


def test_flag_round_trip_keeps_first_since_and_every_queue(store: Store) -> None:
    assert drain_state(store.r) is None
    first = set_drained(store.r, "drain", {"control@a": ["control"]}, keep=["watchdog"])
    # A second drain sees the worker consuming nothing: it must not forget what it had.
    second = set_drained(store.r, "teardown", {"control@a": [], "gpu-j-a1@i": ["train.i"]})
    assert second.since == first.since
    assert second.by == "teardown"
    assert second.workers == {"control@a": ["control"], "gpu-j-a1@i": ["train.i"]}
    assert second.keep == ["watchdog"]
    assert clear_drained(store.r) == second
    assert drain_state(store.r) is None


def test_submission_is_refused_while_drained_and_nothing_is_written(
    store: Store, settings: object
) -> None:
    job = {
        "model": "m",
        "layer": 1,
        "dataset": "d",
        "sae": {"n_latents": 64, "k": 4},
        "train": {"total_tokens": 1024, "batch_tokens": 256},
    }
    spec = SweepSpec.model_validate({"name": "refused", "job": job})
    set_drained(store.r, "drain", {})
    with pytest.raises(QueueDrained, match="drain --undo"):
        submit_sweep(spec, spec.expand(), store)
    assert store.sweep_ids() == []
    clear_drained(store.r)
    check_admits_work(store.r)


@dataclass
class FakeQueue:
    name: str


@dataclass
class FakeTaskConsumer:
    queues: list[FakeQueue]


@dataclass
class FakeConsumer:
    """What hold_worker_if_drained uses of Celery's worker Consumer."""

    hostname: str
    task_consumer: FakeTaskConsumer
    cancelled: list[str] = field(default_factory=list)

    def cancel_task_queue(self, queue: str) -> None:
        self.cancelled.append(queue)


def test_a_worker_starting_while_drained_drops_its_work_queues(store: Store) -> None:
    queues = FakeTaskConsumer([FakeQueue("control"), FakeQueue("watchdog")])
    consumer = FakeConsumer("control@b", queues)
    assert hold_worker_if_drained(store.r, consumer) == []  # not drained: consumes on

    set_drained(store.r, "drain", {}, keep=["watchdog"])
    assert hold_worker_if_drained(store.r, consumer) == ["control"]
    assert consumer.cancelled == ["control"]
    state = drain_state(store.r)
    assert state is not None and state.workers == {"control@b": ["control"]}
