"""The liveness probe: over SSH, one trivial command that reports the instance's clock, the age
of the training heartbeat file, whether the process that wrote that heartbeat (the trainer; its
pid is in the file) still runs, and whether the GPU-side worker process runs.

Ages are computed on the instance (its clock minus the file's mtime), so clock skew between the
orchestrator and the instance does not matter. Sessions are kept between ticks and reused (a
fresh connect costs a key exchange; a kept one a single command round trip); a kept session
that fails is replaced by a fresh connection within the same probe.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from jobs.instances import ssh_target
from jobs.remote import layout_for
from jobs.ssh import CommandResult, SSHError, SSHTarget
from jobs.ssh_connect import connect
from queue_app.records import InstanceRecord
from queue_app.settings import Settings


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw; `error` is set when the instance could not be reached."""

    error: str | None = None
    heartbeat_age_s: float | None = None
    """None: no heartbeat file yet."""
    worker_alive: bool | None = None
    """None: no worker has been started (no pid file)."""
    trainer_alive: bool | None = None
    """Whether the process that wrote the heartbeat runs; None: no heartbeat (or no pid in it)."""


class Probe(Protocol):
    """Probes instances; a call never raises (an unreachable instance is a result)."""

    def __call__(self, instance: InstanceRecord) -> ProbeResult: ...

    def retain(self, instance_ids: Iterable[str]) -> None:
        """Forget (close) whatever is kept for instances that are no longer probed."""


class Session(Protocol):
    """What a probe needs of an SSH session (jobs.ssh.SSHSession, or a fake)."""

    def run(self, command: str, *, timeout: float = ...) -> CommandResult: ...

    def close(self) -> None: ...


Connect = Callable[[SSHTarget, float], Session]


def probe_command(instance: InstanceRecord) -> str:
    """The one command a probe runs (POSIX sh; GNU stat)."""
    layout = layout_for(instance)
    heartbeat, pid = shlex.quote(layout.heartbeat), shlex.quote(layout.worker_pid)
    return (
        'alive() { if [ -z "$2" ]; then echo $1=none; '
        'elif kill -0 "$2" 2>/dev/null; then echo $1=up; else echo $1=down; fi; }; '
        "echo now=$(date +%s); "
        f"echo heartbeat=$(stat -c %Y {heartbeat} 2>/dev/null); "
        f'alive worker "$(cat {pid} 2>/dev/null)"; '
        f'alive trainer "$(sed -n \'s/.*"pid": *\\([0-9][0-9]*\\).*/\\1/p\' {heartbeat} '
        '2>/dev/null)"'
    )


def parse_probe_output(stdout: str) -> ProbeResult:
    fields = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    now, heartbeat = fields.get("now", ""), fields.get("heartbeat", "")
    age = float(now) - float(heartbeat) if now.isdigit() and heartbeat.isdigit() else None
    states = {"up": True, "down": False}
    return ProbeResult(
        heartbeat_age_s=age,
        worker_alive=states.get(fields.get("worker", "none")),
        trainer_alive=states.get(fields.get("trainer", "none")),
    )


def connect_once(target: SSHTarget, timeout: float) -> Session:
    """One connection attempt: a probe that fails is a miss, retried by the next tick."""
    return connect(target, timeout=timeout, attempts=1)


class SSHProbe:
    """Probes instances over SSH, keeping one session per instance across ticks."""

    def __init__(self, settings: Settings, connect_fn: Connect = connect_once) -> None:
        self._settings = settings
        self._connect = connect_fn
        self._timeout = settings.watchdog_ssh_timeout_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __call__(self, instance: InstanceRecord) -> ProbeResult:
        command = probe_command(instance)
        kept = self._kept(instance.instance_id)
        if kept is not None:
            try:
                return parse_probe_output(kept.run(command, timeout=self._timeout).stdout)
            except SSHError:
                self._drop(instance.instance_id)  # went stale between ticks: connect afresh
        try:
            session = self._open(instance)
            return parse_probe_output(session.run(command, timeout=self._timeout).stdout)
        except (SSHError, ValueError) as exc:
            self._drop(instance.instance_id)
            return ProbeResult(error=f"{type(exc).__name__}: {exc}")

    def retain(self, instance_ids: Iterable[str]) -> None:
        keep = set(instance_ids)
        with self._lock:
            gone = [i for i in self._sessions if i not in keep]
        for instance_id in gone:
            self._drop(instance_id)

    def close(self) -> None:
        self.retain(())

    def _kept(self, instance_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(instance_id)

    def _open(self, instance: InstanceRecord) -> Session:
        session = self._connect(ssh_target(instance, self._settings), self._timeout)
        with self._lock:
            stale = self._sessions.pop(instance.instance_id, None)
            self._sessions[instance.instance_id] = session
        if stale is not None:
            stale.close()
        return session

    def _drop(self, instance_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(instance_id, None)
        if session is not None:
            session.close()
