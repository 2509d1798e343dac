"""`saefleet flower`: basic auth from the environment or a generated 0600 file, never on the
command line; no binding beyond loopback without auth; and a real Flower that refuses an
unauthenticated API request and lists our control worker to one with the credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.flower import FlowerConfigError, credentials, is_loopback, prepare
from queue_app.processes import cmdline, free_port, stop_process, wait_for_port
from queue_app.settings import Settings
from tests.e2e.harness import ControlPlane
from tests.support import REPO


def test_loopback_addresses() -> None:
    assert all(is_loopback(a) for a in ("127.0.0.1", "127.3.2.1", "::1", "localhost"))
    assert not any(is_loopback(a) for a in ("", "0.0.0.0", "10.1.2.3", "example.org"))


def test_refuses_to_serve_beyond_loopback_without_auth(settings: Settings) -> None:
    with pytest.raises(FlowerConfigError, match="without auth"):
        prepare(settings, "0.0.0.0", 5555, persistent=False, auth=False)
    argv, env, creds = prepare(settings, "127.0.0.1", 5555, persistent=False, auth=False)
    assert creds is None and "FLOWER_BASIC_AUTH" not in env
    argv, env, creds = prepare(settings, "0.0.0.0", 5555, persistent=True, auth=True)
    assert creds is not None
    assert env["FLOWER_BASIC_AUTH"] == f"saefleet:{creds.password}"
    assert not any(creds.password in arg for arg in argv)  # `ps` shows argv
    assert f"--db={settings.flower_dir / 'flower.db'}" in argv


def test_password_is_generated_once_into_a_private_file(settings: Settings) -> None:
    first = credentials(settings)
    assert first.generated_at is not None
    assert first.generated_at.stat().st_mode & 0o777 == 0o600
    second = credentials(settings)
    assert second.password == first.password and second.generated_at is None


def test_credentials_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAEFLEET_FLOWER_USER", "ops")
    monkeypatch.setenv("SAEFLEET_FLOWER_PASSWORD", "from-env-pw")
    creds = credentials(Settings())
    assert (creds.user, creds.password, creds.generated_at) == ("ops", "from-env-pw", None)
    monkeypatch.setenv("SAEFLEET_FLOWER_PASSWORD", "a,b")
    with pytest.raises(FlowerConfigError, match="','"):
        credentials(Settings())
    monkeypatch.setenv("SAEFLEET_FLOWER_PASSWORD", "")  # a blank line in .env: generate one
    assert credentials(Settings()).generated_at is not None


@pytest.fixture
def flower(plane: ControlPlane) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`saefleet flower` on a free loopback port (its stderr in logs/flower-cli.err)."""
    port = free_port()
    err = plane.home / "flower-cli.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "flower", "--port", str(port)],
            env=plane.env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout_s=60)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc.pid, timeout_s=10)
        proc.wait(timeout=5)


@pytest.mark.slow
def test_flower_requires_auth_and_lists_our_workers(
    plane: ControlPlane, flower: tuple[str, subprocess.Popen[bytes]]
) -> None:
    plane.start_control()
    base, proc = flower
    password = (plane.settings.flower_dir / "password").read_text().strip()
    printed = (plane.home / "flower-cli.err").read_text()
    assert password in printed and "shown once" in printed
    assert password not in cmdline(proc.pid) and password not in " ".join(os.environ.values())

    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    wrong = httpx.get(f"{base}/api/workers", auth=("saefleet", "wrong"), timeout=10)
    assert wrong.status_code == 401
    deadline = time.monotonic() + 30
    workers: dict[str, object] = {}
    while not any(name.startswith("control-") for name in workers):
        assert time.monotonic() < deadline, f"flower never listed the control worker: {workers}"
        reply = httpx.get(
            f"{base}/api/workers", params={"refresh": 1}, auth=("saefleet", password), timeout=10
        )
        assert reply.status_code == 200
        workers = reply.json()
    assert httpx.get(f"{base}/healthcheck", timeout=10).status_code == 200  # Flower's own
    # --persistent by default: its shelve (dbm adds suffixes) lives under SAEFLEET_HOME
    assert list(plane.settings.flower_dir.glob("flower.db*"))
