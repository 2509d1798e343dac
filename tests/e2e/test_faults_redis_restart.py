"""Redis restarted in the middle of a 2-job sweep (SIGTERM, a few seconds down, started again
on its AOF): the job and instance records, the queued and unacknowledged messages and the
chord's state survive, every service reconnects, and the sweep completes on attempt 1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_app.records import JobRecord
from tests.e2e.faults import run_scenario
from tests.e2e.harness import QUICK_REDELIVERY, control_plane, start_plane
from tests.support.servers import PrivateRedis, private_redis, require_sshd
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sshd]

DOWN_S = 3.0


@pytest.fixture
def redis_server_to_restart(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


def test_redis_restarted_mid_sweep(
    redis_server_to_restart: PrivateRedis,
    home: Path,
    fleet_assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    require_sshd()
    server = redis_server_to_restart
    with control_plane(home, server.url) as plane:
        plane.env.update(QUICK_REDELIVERY)
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
