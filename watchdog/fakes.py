"""In-process stand-ins for a provider and for SSH sessions, with configurable latency: what the
benchmark runs ticks against, and what the unit tests use instead of a cloud."""

from __future__ import annotations

import builtins
import threading
import time
from dataclasses import dataclass

from jobs.providers import (
    INSTANCE_NAME_PREFIX,
    Instance,
    InstanceStatus,
    InstanceType,
    LaunchRequest,
    NotFound,
)
from jobs.ssh import CommandResult, SSHConnectError, SSHTarget
from watchdog.probe import Session


@dataclass(frozen=True)
class Latency:
    """Seconds each kind of call takes (an HTTP round trip, an SSH handshake, ...)."""

    list_s: float = 0.0
    get_s: float = 0.0
    terminate_s: float = 0.0
    ssh_connect_s: float = 0.0
    ssh_command_s: float = 0.0


class FakeProvider:
    """A provider whose instances live in a dict; thread-safe; counts the calls it gets."""

    def __init__(self, name: str = "local", latency: Latency | None = None) -> None:
        self.name = name
        self.latency = latency or Latency()
        self.instances: dict[str, Instance] = {}
        self.calls: dict[str, int] = {"list": 0, "get": 0, "terminate": 0}
        self._lock = threading.Lock()

    def add(
        self, instance_id: str, name: str, status: InstanceStatus = InstanceStatus.ACTIVE
    ) -> Instance:
        instance = Instance(
            id=instance_id,
            name=name,
            status=status,
            instance_type="fake-gpu",
            region="fake-1",
            price_per_hour=1.0,
            host="127.0.0.1",
            workdir=f"/home/ubuntu/{name}",
        )
        with self._lock:
            self.instances[instance_id] = instance
        return instance

    def set_status(self, instance_id: str, status: InstanceStatus) -> None:
        with self._lock:
            self.instances[instance_id] = self.instances[instance_id].model_copy(
                update={"status": InstanceStatus(status)}
            )

    def instance_types(self) -> builtins.list[InstanceType]:
        return [InstanceType(name="fake-gpu", price_per_hour=1.0, regions=["fake-1"])]

    def launch(self, request: LaunchRequest) -> Instance:
        return self.add(f"fake-{len(self.instances)}", request.name)

    def get(self, instance_id: str) -> Instance:
        self._call("get", self.latency.get_s)
        with self._lock:
            instance = self.instances.get(instance_id)
        if instance is None:
            raise NotFound(f"no fake instance {instance_id}")
        return instance

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        self._call("list", self.latency.list_s)
        with self._lock:
            instances = list(self.instances.values())
        return [
            i
            for i in instances
            if not i.status.gone and (include_foreign or i.name.startswith(INSTANCE_NAME_PREFIX))
        ]

    def terminate(self, instance_id: str) -> None:
        self._call("terminate", self.latency.terminate_s)
        with self._lock:
            if instance_id in self.instances:
                self.instances[instance_id] = self.instances[instance_id].model_copy(
                    update={"status": InstanceStatus.TERMINATED}
                )

    def _call(self, what: str, seconds: float) -> None:
        with self._lock:
            self.calls[what] += 1
        if seconds:
            time.sleep(seconds)


class FakeSSH:
    """A `Connect` function for watchdog.probe.SSHProbe: sessions that answer the probe
    command with a fresh heartbeat and a running worker, after the configured latency.
    Hosts listed in `down` refuse connections."""

    def __init__(self, latency: Latency | None = None) -> None:
        self.latency = latency or Latency()
        self.down: set[str] = set()
        self.connects = 0
        self._lock = threading.Lock()

    def __call__(self, target: SSHTarget, timeout: float) -> Session:
        if self.latency.ssh_connect_s:
            time.sleep(self.latency.ssh_connect_s)
        if target.host_key_id in self.down:
            raise SSHConnectError(f"cannot reach {target}: connection refused")
        with self._lock:
            self.connects += 1
        return _FakeSession(self, target.host_key_id)


class _FakeSession:
    def __init__(self, ssh: FakeSSH, instance_id: str) -> None:
        self._ssh, self._instance_id = ssh, instance_id

    def run(self, command: str, *, timeout: float = 60.0) -> CommandResult:
        if self._ssh.latency.ssh_command_s:
            time.sleep(self._ssh.latency.ssh_command_s)
        if self._instance_id in self._ssh.down:
            raise SSHConnectError(f"connection to {self._instance_id} lost")
        now = int(time.time())
        out = f"now={now}\nheartbeat={now - 1}\nworker=up\ntrainer=up\n"
        return CommandResult(0, out, "")

    def close(self) -> None:
        """Nothing to release."""
