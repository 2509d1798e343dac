"""The tunnel service: a process on an instance reaches the control plane's Redis through the
reverse forward, and a dropped SSH session is re-established on the same remote port."""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from jobs.providers import Instance
from jobs.ssh import SSHSession
from jobs.tunnels import TunnelService, tunnel_broker_url
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.statemachine import InstanceState
from queue_app.store import Store


def test_broker_url_keeps_credentials_and_database() -> None:
    assert (
        tunnel_broker_url("redis://:s3cret@10.0.0.5:6390/2", 41000)
        == "redis://:s3cret@127.0.0.1:41000/2"
    )
    assert tunnel_broker_url("rediss://u:p@host:1/0?ssl_cert_reqs=none", 7) == (
        "rediss://u:p@127.0.0.1:7/0?ssl_cert_reqs=none"
    )
    assert tunnel_broker_url("redis://localhost:6379/0", 9) == "redis://127.0.0.1:9/0"


@pytest.fixture
def service(settings: Settings, store: Store) -> Iterator[TunnelService]:
    tunnels = TunnelService(settings, store)
    thread = threading.Thread(target=tunnels.run, kwargs={"interval_s": 0.2}, daemon=True)
    thread.start()
    yield tunnels
    tunnels.stop()
    thread.join(timeout=10)


def register(store: Store, instance: Instance) -> None:
    store.register_instance(
        InstanceRecord(
            instance_id=instance.id,
            provider="local",
            name=instance.name,
            job_id="job-1",
            sweep_id="sw-1",
            attempt=1,
            state=InstanceState.LAUNCHED,
            launched_at=time.time(),
            price_per_hour=0.0,
            host=instance.host,
            ssh_port=instance.ssh_port,
            ssh_user=instance.ssh_user,
            workdir=instance.workdir,
        )
    )


def wait_for_port(store: Store, instance_id: str, previous: int | None = None) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        port = store.instance(instance_id).broker_port
        if port and port != previous:
            return port
        time.sleep(0.1)
    raise TimeoutError("no tunnel port recorded")


def ping_through(session: SSHSession, url: str) -> str:
    script = f"import redis; print(redis.Redis.from_url({url!r}).ping())"
    return session.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", check=True).stdout


def test_instance_reaches_redis_through_the_tunnel_and_survives_a_drop(
    settings: Settings,
    store: Store,
    service: TunnelService,
    local_instance: Instance,
    ssh_session: SSHSession,
) -> None:
    register(store, local_instance)
    port = wait_for_port(store, local_instance.id)
    url = tunnel_broker_url(settings.broker_url, port)
    assert ping_through(ssh_session, url).strip() == "True"

    service.tunnels[local_instance.id].session.transport.close()  # the SSH session drops
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tunnel = service.tunnels.get(local_instance.id)
        if tunnel is not None and tunnel.alive:
            break
        time.sleep(0.1)
    assert service.tunnels[local_instance.id].port == port  # same URL stays valid
    assert ping_through(ssh_session, url).strip() == "True"

    store.mark_instance_terminated(local_instance.id)
    deadline = time.monotonic() + 10
    while local_instance.id in service.tunnels and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local_instance.id not in service.tunnels
