"""The SSH liveness probe: output parsing, session reuse across ticks and reconnecting (fakes),
and the real command against a local-provider instance (a real sshd)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.instances import fleet_keypair
from jobs.providers import LaunchRequest
from jobs.providers.local import INSTANCE_TYPE, REGION, LocalProvider
from jobs.remote import RemoteLayout
from jobs.ssh_fake import FakeSSH
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.statemachine import InstanceState
from tests.support.servers import require_sshd
from watchdog.probe import ProbeResult, SSHProbe, parse_probe_output


def _record(instance_id: str, port: int = 22, workdir: str = "/w") -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        provider="local",
        name=f"sf-{instance_id}",
        job_id="j",
        sweep_id="s",
        attempt=1,
        state=InstanceState.LAUNCHED,
        launched_at=time.time(),
        price_per_hour=0.0,
        host="127.0.0.1",
        ssh_port=port,
        ssh_user="ubuntu",
        workdir=workdir,
    )


def test_parse_probe_output() -> None:
    out = "now=1000\nheartbeat=990\nworker=up\ntrainer=down\n"
    assert parse_probe_output(out) == ProbeResult(
        heartbeat_age_s=10.0, worker_alive=True, trainer_alive=False
    )
    assert parse_probe_output("now=1000\nheartbeat=\nworker=none\ntrainer=none\n") == (
        ProbeResult()
    )
    assert parse_probe_output("now=1000\nheartbeat=\nworker=down\n").worker_alive is False


def test_sessions_are_kept_between_ticks_and_replaced_when_broken(wd_settings: Settings) -> None:
    ssh = FakeSSH()
    probe = SSHProbe(wd_settings, connect_fn=ssh)
    instance = _record("i-1")

    assert probe(instance).error is None
    assert probe(instance).error is None
    assert ssh.connects == 1

    ssh.down.add("i-1")
    assert "connection refused" in (probe(instance).error or "")
    ssh.down.clear()
    assert probe(instance).error is None
    assert ssh.connects == 2

    probe.retain([])
    assert probe(instance).error is None
    assert ssh.connects == 3


@pytest.fixture
def local_instance(wd_settings: Settings) -> Iterator[tuple[LocalProvider, InstanceRecord]]:
    """One local-provider instance (a real sshd), terminated at teardown."""
    require_sshd()
    provider = LocalProvider(wd_settings.local_instances_dir)
    _, public_key = fleet_keypair(wd_settings)
    launched = provider.launch(
        LaunchRequest(
            name="sf-probe-1",
            instance_type=INSTANCE_TYPE,
            region=REGION,
            ssh_public_key=public_key,
        )
    )
    try:
        record = _record(launched.id, launched.ssh_port, launched.workdir)
        yield provider, record.model_copy(update={"ssh_user": launched.ssh_user})
    finally:
        provider.terminate(launched.id)


@pytest.mark.sshd
def test_probe_against_a_real_instance(
    wd_settings: Settings, local_instance: tuple[LocalProvider, InstanceRecord]
) -> None:
    provider, instance = local_instance
    probe = SSHProbe(wd_settings)
    layout = RemoteLayout(instance.workdir or "")
    try:
        assert probe(instance) == ProbeResult()  # nothing started yet

        Path(layout.run_dir).mkdir(parents=True)
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            Path(layout.worker_pid).write_text(f"{sleeper.pid}\n")
            Path(layout.heartbeat).write_text(json.dumps({"step": 3, "pid": sleeper.pid}))
            seen = probe(instance)
            assert seen.error is None and seen.worker_alive is True and seen.trainer_alive
            assert seen.heartbeat_age_s is not None and 0 <= seen.heartbeat_age_s < 5
        finally:
            sleeper.kill()
            sleeper.wait()
        seen = probe(instance)
        assert seen.worker_alive is False and seen.trainer_alive is False

        provider.preempt(instance.instance_id)
        assert probe(instance).error is not None
    finally:
        probe.close()
