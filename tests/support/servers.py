"""A private Redis for the test session (never the machine's shared one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from queue_app.processes import ProcessError, free_port, sshd_binary, stop_process
from queue_app.redis_server import start_redis

TEST_PASSWORD = "test-redis-password"


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """Start redis-server (AOF on) on a free loopback port; yields its URL; stops it after."""
    port = free_port()
    pid = start_redis(data_dir, port, TEST_PASSWORD, data_dir / "redis.log")
    try:
        yield f"redis://:{TEST_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        stop_process(pid)


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
