"""Redis restarted in the middle of a 3-job sweep (SIGTERM, a few seconds down, started again
on its AOF): the job and instance records, the queued and unacknowledged messages and the
chord's state survive, every service reconnects, and the sweep completes on attempt 1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_app.processes import free_port, stop_process
from queue_app.records import JobRecord
from queue_app.redis_server import start_redis
from tests.faults.harness import run_scenario, start_plane, wait_for
from tests.support.fleet import control_plane
from tests.support.servers import TEST_PASSWORD, require_sshd

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

DOWN_S = 3.0


class RestartableRedis:
    """A private redis-server (AOF on) that can be stopped and started on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"redis://:{TEST_PASSWORD}@127.0.0.1:{self.port}/0"
        self.pid: int | None = None

    def start(self) -> None:
        self.pid = start_redis(self.data_dir, self.port, TEST_PASSWORD, self.data_dir / "redis.log")

    def stop(self) -> None:
        if self.pid is not None:
            stop_process(self.pid)
            self.pid = None


@pytest.fixture
def redis_server_to_restart(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restarted_mid_sweep(
    redis_server_to_restart: RestartableRedis,
    home: Path,
    fleet_assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    require_sshd()
    server = redis_server_to_restart
    with control_plane(home, server.url) as plane:
        start_plane(plane)

        def restart_redis(_: JobRecord) -> None:
            sweep_ids = plane.store.sweep_ids()
            server.stop()
            time.sleep(DOWN_S)
            server.start()
            # the AOF brought the records back (a stale pooled connection may fail once)
            wait_for("the records after the restart", plane.store.sweep_ids, timeout_s=30)
            assert plane.store.sweep_ids() == sweep_ids

        run_scenario(plane, tmp_path, fleet_assets, "redis-restart", restart_redis)
