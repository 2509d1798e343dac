"""The local provider with real sshd instances: launch, boot delay, idempotency, terminate and
preempt (processes included), unhealthy after an external kill, listing, spot preemptions."""

from __future__ import annotations

import os
import pwd
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.providers.base import Instance, InstanceStatus, LaunchRequest
from jobs.providers.errors import InvalidRequest, NotFound
from jobs.providers.local import (
    INSTANCE_TYPE,
    REGION,
    SPOT_PRICE_FRACTION,
    LocalProvider,
    preemption_delay_s,
)
from jobs.providers.notice import NoticeKind, open_notice_source
from jobs.ssh import SSHConnectError, SSHSession
from jobs.ssh_connect import connect
from queue_app.processes import pid_alive
from tests.jobs.conftest import LaunchLocal, TargetFor
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sshd

DETACHED_SLEEP = (
    "setsid nohup sh -c 'echo $$ > {pidfile}; {prelude}exec sleep 300' >/dev/null 2>&1 </dev/null &"
)


def start_detached_sleep(session: SSHSession, workdir: str, prelude: str = "") -> int:
    """Start `sleep` on the instance the way the fleet starts its worker; returns its pid."""
    pidfile = Path(workdir, f"sleep-{time.monotonic_ns()}.pid")
    session.run(DETACHED_SLEEP.format(pidfile=pidfile, prelude=prelude), check=True)
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the detached process never started"
        time.sleep(0.01)
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    return pid


def wait_dead(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def active(provider: LocalProvider, instance_id: str) -> Instance | None:
    instance = provider.get(instance_id)
    return instance if instance.status is InstanceStatus.ACTIVE else None


def test_instance_types_offer_one_cpu_type_with_a_spot_discount(tmp_path: Path) -> None:
    (offer,) = LocalProvider(tmp_path, price_per_hour=2.0).instance_types()
    assert (offer.name, offer.gpu_count, offer.regions) == (INSTANCE_TYPE, 0, [REGION])
    assert offer.price_per_hour == 2.0
    assert offer.spot_price_per_hour == pytest.approx(2.0 * SPOT_PRICE_FRACTION)


def test_launch_gives_an_active_instance_with_its_own_home(
    launch_local: LaunchLocal, ssh_target_for: TargetFor, local_instances_dir: Path
) -> None:
    instance = launch_local("sf-job-1")
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert instance.status is InstanceStatus.ACTIVE
    assert re.fullmatch(r"local-[0-9a-f]{8}", instance.id)
    assert (instance.host, instance.region, instance.ssh_user) == ("127.0.0.1", REGION, user)
    assert Path(instance.workdir) == local_instances_dir / instance.id / "home"
    assert Path(instance.workdir).is_dir()
    assert (local_instances_dir / instance.id / "instance.json").is_file()
    with connect(ssh_target_for(instance)) as session:
        env = session.run("echo $HOME; echo $SAEFLEET_LOCAL_INSTANCE; whoami").stdout.split()
    assert env == [instance.workdir, instance.id, user]


def test_launch_is_idempotent_on_the_name(
    launch_local: LaunchLocal, make_local_provider: Callable[..., LocalProvider]
) -> None:
    first = launch_local("sf-job-1")
    assert launch_local("sf-job-1").id == first.id
    # another process's provider sees the same fleet (the truth is on disk)
    assert launch_local("sf-job-1", provider=make_local_provider()).id == first.id


def test_concurrent_launches_of_one_name_start_one_instance(
    launch_local: LaunchLocal, local_provider: LocalProvider
) -> None:
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(launch_local("sf-race-1").id)) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 6
    assert [i.id for i in local_provider.list()] == ids[:1]


def test_a_name_whose_instance_is_gone_launches_a_new_one(
    launch_local: LaunchLocal, local_provider: LocalProvider
) -> None:
    first = launch_local("sf-job-1")
    local_provider.terminate(first.id)
    second = launch_local("sf-job-1")
    assert second.id != first.id
    assert second.status is InstanceStatus.ACTIVE


def test_booting_until_the_boot_delay_has_passed(
    launch_local: LaunchLocal, make_local_provider: Callable[..., LocalProvider]
) -> None:
    provider = make_local_provider(boot_delay_s=0.5)
    launching = time.monotonic()
    instance = launch_local(provider=provider)
    assert (instance.status, instance.host) == (InstanceStatus.BOOTING, None)
    ready = wait_for("the instance to boot", lambda: active(provider, instance.id), 10)
    assert time.monotonic() - launching >= 0.5
    assert ready.host == "127.0.0.1"


def test_spot_instances_record_the_spot_price(
    launch_local: LaunchLocal, make_local_provider: Callable[..., LocalProvider]
) -> None:
    provider = make_local_provider(price_per_hour=1.5)
    spot = launch_local("sf-spot-1", provider=provider, capacity="spot")
    on_demand = launch_local("sf-od-1", provider=provider)
    assert spot.capacity == "spot"
    assert spot.price_per_hour == pytest.approx(1.5 * SPOT_PRICE_FRACTION)
    assert on_demand.price_per_hour == 1.5


def test_terminate_stops_detached_processes_and_keeps_the_files(
    local_provider: LocalProvider, local_instance: Instance, ssh_session: SSHSession
) -> None:
    worker = start_detached_sleep(ssh_session, local_instance.workdir)
    Path(local_instance.workdir, "artifact.txt").write_text("keep me")
    local_provider.terminate(local_instance.id)
    assert wait_dead(worker)
    assert local_provider.get(local_instance.id).status is InstanceStatus.TERMINATED
    assert Path(local_instance.workdir, "artifact.txt").read_text() == "keep me"
    local_provider.terminate(local_instance.id)  # already gone: success
    with pytest.raises(SSHConnectError):
        ssh_session.run("true")


def test_preempt_kills_abruptly_even_what_ignores_sigterm(
    local_provider: LocalProvider, local_instance: Instance, ssh_session: SSHSession
) -> None:
    stubborn = start_detached_sleep(ssh_session, local_instance.workdir, prelude="trap '' TERM; ")
    started = time.monotonic()
    local_provider.preempt(local_instance.id)
    assert time.monotonic() - started < 2
    assert wait_dead(stubborn)
    assert local_provider.get(local_instance.id).status is InstanceStatus.PREEMPTED
    local_provider.terminate(local_instance.id)  # gone already: stays preempted
    assert local_provider.get(local_instance.id).status is InstanceStatus.PREEMPTED


def test_an_externally_killed_sshd_is_unhealthy_until_terminated(
    local_provider: LocalProvider,
    local_instance: Instance,
    ssh_session: SSHSession,
    local_instances_dir: Path,
) -> None:
    worker = start_detached_sleep(ssh_session, local_instance.workdir)
    sshd_pid = int((local_instances_dir / local_instance.id / "sshd.pid").read_text())
    os.kill(sshd_pid, signal.SIGKILL)
    assert wait_dead(sshd_pid)
    assert local_provider.get(local_instance.id).status is InstanceStatus.UNHEALTHY
    assert pid_alive(worker)  # the VM's processes outlive its sshd
    local_provider.terminate(local_instance.id)
    assert wait_dead(worker)
    assert local_provider.get(local_instance.id).status is InstanceStatus.TERMINATED


def test_list_shows_live_instances_with_our_prefix(
    launch_local: LaunchLocal, local_provider: LocalProvider
) -> None:
    ours, foreign = launch_local("sf-job-1"), launch_local("someone-elses")
    assert [i.id for i in local_provider.list()] == [ours.id]
    assert {i.id for i in local_provider.list(include_foreign=True)} == {ours.id, foreign.id}
    local_provider.terminate(ours.id)
    assert local_provider.list() == []


def test_unknown_ids_are_not_found_and_terminating_them_succeeds(
    local_provider: LocalProvider,
) -> None:
    for unknown in ("local-00000000", "../etc"):
        with pytest.raises(NotFound):
            local_provider.get(unknown)
        with pytest.raises(NotFound):
            local_provider.preempt(unknown)
        local_provider.terminate(unknown)  # already gone


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instance_type", "gpu_8x_h100"),
        ("region", "us-east-1"),
        ("ssh_public_key", 'ssh-ed25519 AAAA key\ncommand="evil" ssh-ed25519 BBBB'),
    ],
)
def test_invalid_requests_are_rejected(
    local_provider: LocalProvider, ssh_keypair: tuple[Path, str], field: str, value: str
) -> None:
    request = {
        "name": "sf-job-1",
        "instance_type": INSTANCE_TYPE,
        "region": REGION,
        "ssh_public_key": ssh_keypair[1],
        field: value,
    }
    with pytest.raises(InvalidRequest, match=field):
        local_provider.launch(LaunchRequest.model_validate(request))
    assert local_provider.list(include_foreign=True) == []


def test_spot_instances_are_preempted_on_their_schedule(
    launch_local: LaunchLocal,
    make_local_provider: Callable[..., LocalProvider],
    ssh_target_for: TargetFor,
) -> None:
    lifetime_s = 2.0
    # the delay scales as 1/rate: pick the rate that preempts this name after `lifetime_s`
    provider = make_local_provider(preempt_rate=preemption_delay_s("sf-spot-1", 1.0) / lifetime_s)
    launching = time.monotonic()
    launching = time.monotonic()
    spot = launch_local("sf-spot-1", provider=provider, capacity="spot")
    on_demand = launch_local("sf-od-1", provider=provider)
    with connect(ssh_target_for(spot)) as session:
        worker = start_detached_sleep(session, spot.workdir)
    assert provider.get(spot.id).status is InstanceStatus.ACTIVE
    preempted = lambda: provider.get(spot.id).status is InstanceStatus.PREEMPTED  # noqa: E731
    wait_for("the spot instance to be preempted", preempted, 10)
    assert time.monotonic() - launching >= lifetime_s
    assert [i.id for i in provider.list()] == [on_demand.id]
    assert wait_dead(worker)
    assert provider.get(on_demand.id).status is InstanceStatus.ACTIVE


def test_preemption_delays_are_reproducible_and_exponential() -> None:
    assert preemption_delay_s("sf-a-1", 2.0) == preemption_delay_s("sf-a-1", 2.0)
    assert preemption_delay_s("sf-a-1", 2.0) != preemption_delay_s("sf-b-1", 2.0)
    assert preemption_delay_s("sf-a-1", 0.0) is None
    delays = [preemption_delay_s(f"sf-job{n}-1", 2.0) or 0.0 for n in range(4000)]
    assert statistics.mean(delays) == pytest.approx(1800.0, rel=0.1)  # 2 per hour


def test_preempt_with_notice_tells_the_instance_then_kills_it_later(
    local_provider: LocalProvider, local_instance: Instance
) -> None:
    source = open_notice_source(local_provider.notice_channel(local_instance.workdir))
    assert source.poll() == []
    told_at = time.time()
    local_provider.preempt(local_instance.id, notice_s=3600)
    [notice] = source.poll()
    assert notice.kind is NoticeKind.INTERRUPTION and notice.at >= told_at + 3600
    assert local_provider.get(local_instance.id).status is InstanceStatus.ACTIVE
    local_provider.preempt(local_instance.id)
    assert local_provider.get(local_instance.id).status is InstanceStatus.PREEMPTED


def test_random_spot_preemptions_come_with_notice_s_of_notice(
    launch_local: LaunchLocal, make_local_provider: Callable[..., LocalProvider]
) -> None:
    # the rate that preempts this name an hour after launch; told at launch (3600 s before)
    provider = make_local_provider(
        preempt_rate=preemption_delay_s("sf-spot-1", 1.0) / 3600, notice_s=3600
    )
    launched_at = time.time()
    spot = launch_local("sf-spot-1", provider=provider, capacity="spot")
    [notice] = open_notice_source(provider.notice_channel(spot.workdir)).poll()
    assert notice.at == pytest.approx(launched_at + 3600, abs=60)
    assert provider.get(spot.id).status is InstanceStatus.ACTIVE
