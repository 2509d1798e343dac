"""Fixtures of every test: a private Redis server per session (per pytest-xdist worker), an
isolated SAEFLEET_HOME per test, the assets end-to-end jobs train on and a control plane."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.bundle import ensure_bundle
from queue_app.settings import Settings
from queue_app.store import Store
from tests.e2e.harness import ControlPlane, control_plane
from tests.support.servers import private_redis, require_sshd
from tests.support.sweeps import make_assets

pytest_plugins = ["tests.e2e.report", "tests.e2e.postmortem", "tests.support.moto_aws"]


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a `timeout`, a cancelled CI job) interrupts the run like Ctrl-C, so that the
    fixtures still stop what they started: Redis, control planes, local instances."""
    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker under `--dist loadgroup`, every test of an `xdist_group` must
    carry the group in its id (xdist adds it, and schedules by it): otherwise the group's tests
    spread over the workers, and a module fixture (a whole scenario) runs once on each."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [
        item.nodeid
        for item in items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rpartition("]")[2]
    ]
    if lost:
        message = (
            f"pytest-xdist could not group {len(lost)} test(s) ({lost[0]}, ...) with this "
            f"pytest {pytest.__version__}: install a pytest that pyproject.toml allows"
        )
        print(message, file=sys.__stderr__)  # the controller shows only its own assertion
        raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server started for this test session on a free port."""
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session Redis, emptied before each test (it is ours alone)."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
    client.close()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated SAEFLEET_HOME, for every test: none reads or writes the machine's, or
    another test's (pytest-xdist runs tests side by side)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("SAEFLEET_HOME", str(path))
    return path


@pytest.fixture
def settings(home: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the test Redis and an isolated home, with fast polling."""
    monkeypatch.setenv("SAEFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("SAEFLEET_POLL_INTERVAL_S", "0.3")
    return Settings()


@pytest.fixture
def store(redis_url: str) -> Store:
    return Store(redis.Redis.from_url(redis_url, decode_responses=True))


def _run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's temporary directory, shared by its pytest-xdist workers."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's directory above each worker's own
    return shared


@pytest.fixture(scope="session")
def fleet_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny LM and synthetic PII corpus every end-to-end job trains on (made once, shared by
    the pytest-xdist workers of the run)."""
    return make_assets(_run_dir(tmp_path_factory) / "assets")


@pytest.fixture(scope="session")
def code_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code bundle (jobs.bundle) of this run's sources, built once (under its own lock)."""
    return ensure_bundle(_run_dir(tmp_path_factory) / "bundles")


@pytest.fixture
def plane(home: Path, redis_url: str, code_bundle: Path) -> Iterator[ControlPlane]:
    """A real control plane for one test (start the services the test needs on it), its home
    holding the run's code bundle: bootstrap would otherwise build the same wheel per test."""
    require_sshd()
    shutil.copytree(code_bundle.parent, home / "bundles" / code_bundle.parent.name)
    with control_plane(home, redis_url) as started:
        yield started
