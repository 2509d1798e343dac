"""The Store's retry of a lost connection: a service's command waits out a Redis restart, the
CLI's fails within seconds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from queue_app.connection import CLI_RETRY_S, SERVICE_RETRY_S, connect, get_store
from queue_app.processes import free_port, stop_process
from queue_app.redis_server import start_redis
from queue_app.settings import Settings
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
