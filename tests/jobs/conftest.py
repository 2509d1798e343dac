"""Fixtures for tests that need instances: local-provider instances (real sshd processes) and
SSH sessions to them, and for the stage unit tests a `StageWorld` of in-process fakes. Every
instance launched here is terminated at teardown, even when the test fails. Without sshd they
skip locally and fail in CI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import jobs.bootstrap
import jobs.instances
from jobs.providers.base import Capacity, Instance, InstanceStatus, LaunchRequest
from jobs.providers.local import INSTANCE_TYPE, REGION, LocalProvider
from jobs.ssh import SSHSession, SSHTarget
from jobs.ssh_connect import connect, ensure_keypair
from queue_app.celery_app import app
from queue_app.settings import Settings
from queue_app.store import Store
from tests.jobs.stage_world import StageWorld
from tests.support.moto_s3 import moto_s3_server
from tests.support.servers import require_sshd

LaunchLocal = Callable[..., Instance]
TargetFor = Callable[..., SSHTarget]


@pytest.fixture
def local_instances_dir(home: Path) -> Path:
    return Settings().local_instances_dir


@pytest.fixture
def make_local_provider(local_instances_dir: Path) -> Iterator[Callable[..., LocalProvider]]:
    """Build LocalProviders (keyword options as in LocalProvider) on the test's instances dir;
    at teardown every instance there is terminated."""
    require_sshd()
    yield lambda **options: LocalProvider(local_instances_dir, **options)
    cleanup = LocalProvider(local_instances_dir)
    for instance in cleanup.list(include_foreign=True):
        cleanup.terminate(instance.id)


@pytest.fixture
def local_provider(make_local_provider: Callable[..., LocalProvider]) -> LocalProvider:
    return make_local_provider()


@pytest.fixture
def ssh_keypair(home: Path) -> tuple[Path, str]:
    """Our client key (private key path, public key line) in the test's keys dir."""
    return ensure_keypair(Settings().keys_dir)


@pytest.fixture
def launch_local(local_provider: LocalProvider, ssh_keypair: tuple[Path, str]) -> LaunchLocal:
    """launch_local(name, provider=local_provider, capacity="on_demand") -> Instance."""

    def launch(
        name: str = "sf-test-1",
        provider: LocalProvider | None = None,
        capacity: Capacity = "on_demand",
        **request: Any,
    ) -> Instance:
        return (provider or local_provider).launch(
            LaunchRequest(
                name=name,
                instance_type=INSTANCE_TYPE,
                region=REGION,
                capacity=capacity,
                ssh_public_key=ssh_keypair[1],
                **request,
            )
        )

    return launch


@pytest.fixture
def local_instance(launch_local: LaunchLocal) -> Instance:
    """One active local instance named sf-test-1."""
    instance = launch_local()
    assert instance.status is InstanceStatus.ACTIVE
    return instance


@pytest.fixture
def ssh_target_for(ssh_keypair: tuple[Path, str], home: Path) -> TargetFor:
    """ssh_target_for(instance, key_path=our key, host_key_id=instance.id) -> SSHTarget."""

    def target_for(
        instance: Instance, key_path: Path | None = None, host_key_id: str | None = None
    ) -> SSHTarget:
        assert instance.host is not None, f"{instance.id} is {instance.status}"
        return SSHTarget(
            host=instance.host,
            port=instance.ssh_port,
            user=instance.ssh_user,
            key_path=key_path or ssh_keypair[0],
            host_key_id=host_key_id or instance.id,
            known_hosts_dir=Settings().known_hosts_dir,
        )

    return target_for


@pytest.fixture
def ssh_target(local_instance: Instance, ssh_target_for: TargetFor) -> SSHTarget:
    return ssh_target_for(local_instance)


@pytest.fixture
def ssh_session(ssh_target: SSHTarget) -> Iterator[SSHSession]:
    """A connected session to `local_instance`, closed at teardown."""
    with connect(ssh_target) as session:
        yield session


@pytest.fixture
def stage_world(
    settings: Settings, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StageWorld]:
    """A StageWorld wired in: the stages reach its provider and SSH through jobs.instances,
    its bundle instead of a wheel build, its ping and task log instead of the broker."""
    world = StageWorld(store, settings)
    bundle = tmp_path / "saefleet-0-py3-none-any.whl"
    bundle.write_bytes(b"wheel")
    monkeypatch.setattr(jobs.instances, "get_provider", lambda spec, settings: world.provider)
    monkeypatch.setattr(jobs.instances, "connect", world.ssh)
    monkeypatch.setattr(jobs.bootstrap, "ensure_bundle", lambda bundles_dir: bundle)
    monkeypatch.setattr(app, "send_task", world.record_send)
    monkeypatch.setattr(app.control, "ping", world.answer_ping)
    monkeypatch.setattr(app.Task, "retry", world.record_retry)
    monkeypatch.setattr(app.Task, "replace", world.record_replace)
    yield world


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server, its own process on a loopback port, for one test module."""
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url
