"""The local provider's instances shared by two homes that reach the instance folder by
different paths (a symlink), as `SAEFLEET_LOCAL_INSTANCES_DIR` allows: each side recognises the
other's sshd, and an instance is reported gone only once its processes are."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.providers.base import InstanceStatus
from jobs.providers.local import LocalProvider
from queue_app.processes import pid_alive
from queue_app.settings import Settings
from tests.jobs.conftest import LaunchLocal

pytestmark = pytest.mark.sshd


@pytest.fixture
def via_symlink(local_instances_dir: Path, tmp_path: Path) -> LocalProvider:
    """A second provider on the same instances, through a symlinked path."""
    local_instances_dir.mkdir(parents=True, exist_ok=True)
    link = tmp_path / "other-home-instances"
    link.symlink_to(local_instances_dir, target_is_directory=True)
    return LocalProvider(link)


def sshd_pid(provider_root: Path, instance_id: str) -> int:
    return int((provider_root / instance_id / "sshd.pid").read_text())


def test_the_instances_dir_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(home=tmp_path).local_instances_dir == tmp_path / "local-instances"
    monkeypatch.setenv("SAEFLEET_LOCAL_INSTANCES_DIR", str(tmp_path / "shared"))
    assert Settings(home=tmp_path / "b").local_instances_dir == tmp_path / "shared"


def test_a_symlinked_home_sees_the_instance_active_and_terminates_every_process(
    launch_local: LaunchLocal, local_instances_dir: Path, via_symlink: LocalProvider
) -> None:
    instance = launch_local("sf-shared-1")
    pid = sshd_pid(local_instances_dir, instance.id)
    assert via_symlink.get(instance.id).status is InstanceStatus.ACTIVE
    via_symlink.terminate(instance.id)
    assert not pid_alive(pid)
    assert via_symlink.get(instance.id).status is InstanceStatus.TERMINATED
    assert via_symlink.list() == []


def test_launched_through_the_symlink_terminated_through_the_real_path(
    launch_local: LaunchLocal, local_provider: LocalProvider, via_symlink: LocalProvider
) -> None:
    instance = launch_local("sf-shared-2", provider=via_symlink)
    assert local_provider.get(instance.id).status is InstanceStatus.ACTIVE
    local_provider.terminate(instance.id)
    assert via_symlink.list() == []
    assert local_provider.get(instance.id).status is InstanceStatus.TERMINATED


def test_an_instance_recorded_ended_whose_sshd_runs_is_not_gone(
    launch_local: LaunchLocal, local_provider: LocalProvider, local_instances_dir: Path
) -> None:
    """What a provider that did not recognise the sshd used to write: "terminated" while the
    sshd still ran. It stays listed (unhealthy) until terminate stops its processes."""
    instance = launch_local("sf-shared-3")
    record = local_instances_dir / instance.id / "instance.json"
    record.write_text(record.read_text().replace('"ended": null', '"ended": "terminated"'))
    assert local_provider.get(instance.id).status is InstanceStatus.UNHEALTHY
    assert [i.id for i in local_provider.list()] == [instance.id]
    pid = sshd_pid(local_instances_dir, instance.id)
    local_provider.terminate(instance.id)
    assert not pid_alive(pid)
    assert local_provider.get(instance.id).status is InstanceStatus.TERMINATED
