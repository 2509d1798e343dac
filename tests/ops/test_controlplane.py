"""`saefleet up` / `down` on a fresh home: a private Redis with AOF and a password, the control
worker, beat and the tunnel service; `up` twice is harmless; stale pid files are handled."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops import controlplane
from queue_app.processes import free_port, pid_alive
from queue_app.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.delenv("SAEFLEET_REDIS_URL", raising=False)
    monkeypatch.setenv("SAEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAEFLEET_REDIS_PORT", str(free_port()))
    settings = Settings()
    try:
        yield settings
    finally:
        controlplane.down(settings)


def saefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
        timeout=180,
    )


def test_up_twice_then_down(embedded: Settings) -> None:
    first = saefleet("up")
    assert first.returncode == 0, first.stderr
    pids = controlplane.status(embedded)
    assert set(pids) == {"redis", "control", "beat", "tunnels"}
    assert all(pid is not None and pid_alive(pid) for pid in pids.values())

    password_file = embedded.redis_dir / "password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    client = redis.Redis.from_url(embedded.broker_url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=embedded.redis_port).ping()

    second = saefleet("up")
    assert second.returncode == 0, second.stderr
    assert "running" in second.stdout and "started" not in second.stdout
    assert controlplane.status(embedded) == pids

    down = saefleet("down")
    assert down.returncode == 0, down.stderr
    assert all(not pid_alive(pid) for pid in pids.values() if pid)
    assert all(pid is None for pid in controlplane.status(embedded).values())


def test_stale_pid_files_are_replaced(embedded: Settings) -> None:
    embedded.run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])  # alive, but not our service
    try:
        (embedded.run_dir / "control.pid").write_text(f"{sleeper.pid}\n")
        (embedded.run_dir / "beat.pid").write_text("999999\n")  # no such process
        result = saefleet("up")
        assert result.returncode == 0, result.stderr
        pids = controlplane.status(embedded)
        assert pids["control"] not in (None, sleeper.pid) and pids["beat"] is not None
        assert sleeper.poll() is None  # a foreign process is never signalled
    finally:
        sleeper.kill()
        sleeper.wait()
