"""Private servers for tests (never the machine's shared ones): a Redis on a free loopback port
that is checked to be ours, and the sshd that local-provider instances need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from queue_app.processes import ProcessError, free_port, sshd_binary, stop_process
from queue_app.redis_server import start_redis

TEST_PASSWORD = "test-redis-password"
PORT_ATTEMPTS = 5


class PrivateRedis:
    """A redis-server (AOF on) of one test or session, on a loopback port picked free; it can be
    stopped and started again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://:{TEST_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on a new free port the first time; on the same port after a stop)."""
        for _ in range(PORT_ATTEMPTS if self.port == 0 else 1):
            port = self.port or free_port()
            log = self.data_dir / "redis.log"
            pid = start_redis(self.data_dir, port, TEST_PASSWORD, log)
            if self._answers_as(pid, port):
                self.port, self.pid = port, pid
                return
            stop_process(pid)  # another process took the port between its pick and our bind
        raise ProcessError(f"no private Redis could listen on a free port; see {log}")

    def stop(self) -> None:
        if self.pid is not None:
            stop_process(self.pid)
            self.pid = None

    @staticmethod
    def _answers_as(pid: int, port: int) -> bool:
        """The server answering on `port` is process `pid` (not another test's Redis)."""
        client = redis.Redis(host="127.0.0.1", port=port, password=TEST_PASSWORD)
        try:
            return int(client.info("server")["process_id"]) == pid
        finally:
            client.close()


@contextmanager
def private_redis(data_dir: Path) -> Iterator[PrivateRedis]:
    """A started PrivateRedis in `data_dir`, stopped after."""
    server = PrivateRedis(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def in_ci() -> bool:
    """CI must fail, not skip, when a server a test needs is missing."""
    return bool(os.environ.get("CI"))


def require_sshd() -> None:
    """Skip the test when sshd is missing (fail in CI, where it must be installed)."""
    try:
        sshd_binary()
    except ProcessError as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
