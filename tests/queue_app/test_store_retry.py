"""The Store's retry of a lost connection: a service's command waits out a Redis restart, the
CLI's fails within seconds."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from queue_app.connection import CLI_RETRY_S, SERVICE_RETRY_S, connect, get_store
from queue_app.processes import free_port, stop_process
from queue_app.redis_server import start_redis
from queue_app.settings import Settings
from queue_app.statemachine import JobState, SegmentStatus
from tests.queue_app.records import make_sweep
from tests.support.servers import TEST_PASSWORD


def test_a_command_waits_out_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:{TEST_PASSWORD}@127.0.0.1:{port}/0"
    pid = start_redis(tmp_path, port, TEST_PASSWORD, tmp_path / "redis.log")
    pids: list[int] = []
    try:
        store = connect(url, retry_s=SERVICE_RETRY_S)
        store.r.set("k", "v")
        stop_process(pid)
        restart = threading.Timer(
            2.0,
            lambda: pids.append(start_redis(tmp_path, port, TEST_PASSWORD, tmp_path / "redis.log")),
        )
        restart.start()
        started = time.monotonic()
        assert store.r.get("k") == "v"  # the AOF kept it; the client waited for the restart
        assert time.monotonic() - started >= 1.5
        restart.join()
    finally:
        for p in [pid, *pids]:
            stop_process(p)


def test_the_cli_fails_fast(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    cli = Settings(home=tmp_path, redis_url=url)  # type: ignore[arg-type]
    service = Settings(home=tmp_path, redis_url=url, service_name="control")  # type: ignore[arg-type]
    assert get_store(cli) is not get_store(service)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        get_store(cli).r.ping()
    assert time.monotonic() - started < CLI_RETRY_S + 3


class ReplyLostOnce(redis.connection.Connection):
    """Runs a script and then, once armed, loses its reply: the connection drops as the reply
    comes back (an SSH tunnel re-made under the GPU-side worker)."""

    armed = False
    command = ""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.command = str(args[0]).upper()
        super().send_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().read_response(*args, **kwargs)
        if ReplyLostOnce.armed and self.command in ("EVALSHA", "EVAL"):
            ReplyLostOnce.armed = False
            self.disconnect()
            raise redis.exceptions.ConnectionError("connection dropped before the reply")
        return reply


def test_a_segment_start_whose_reply_was_lost_is_still_its_runners(redis_url: str) -> None:
    """redis-py runs the start again on a new connection; the segment, running since the
    first try, must not be taken for a duplicate (nobody would run it, and nothing would
    notice for the watchdog's stuck time)."""
    store = connect(redis_url, retry_s=SERVICE_RETRY_S)
    [job] = make_sweep(store, "sw1", [JobState.TRAINING])
    job_id = job.job_id
    store.start_first_attempt(job_id)
    assert store.claim_segment(job_id, 1, 1)
    store.r.connection_pool.connection_class = ReplyLostOnce
    store.r.connection_pool.reset()  # new connections are lossy
    ReplyLostOnce.armed = True

    assert store.start_segment(job_id, 1, 1, runner="delivery-1")

    assert not ReplyLostOnce.armed  # the reply was lost, and the start sent again
    record = store.attempt(job_id, 1)
    assert (record.segment_status, record.segment_runner) == (SegmentStatus.RUNNING, "delivery-1")
    assert not store.start_segment(job_id, 1, 1, runner="delivery-2")  # a real duplicate
