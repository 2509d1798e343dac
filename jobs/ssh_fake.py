"""An in-process stand-in for `jobs.ssh.connect`: sessions whose remote side is a dict of files
per instance and a table of command answers, with configurable latency and unreachable hosts.
The stage and watchdog unit tests and the watchdog benchmark use it instead of sshd.

Instances are told apart by their target's `host_key_id` (the instance id). A command that
matches no answer exits 0 with no output. Errors are jobs.ssh's own: an unreachable host
raises `SSHConnectError`, a missing remote file `RemotePathError`, `run(check=True)` on a
non-zero exit `CommandFailed`.
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from jobs.ssh import CommandFailed, CommandResult, RemotePathError, SSHConnectError, SSHTarget

Answer = CommandResult | Callable[[str], CommandResult]
"""A command's result, or a function of the command text that makes one."""


@dataclass(frozen=True)
class SSHLatency:
    """Seconds an SSH handshake and one command round trip take."""

    connect_s: float = 0.0
    command_s: float = 0.0


class FakeSSH:
    """A `connect(target, timeout)` function. Hosts (instance ids) in `down` refuse
    connections and lose open ones; `files[instance_id]` is that instance's remote files
    (path -> bytes); `commands[instance_id]` lists the commands run there, in order."""

    def __init__(self, latency: SSHLatency | None = None) -> None:
        self.latency = latency or SSHLatency()
        self.down: set[str] = set()
        self.connects = 0
        self.files: dict[str, dict[str, bytes]] = defaultdict(dict)
        self.commands: dict[str, list[str]] = defaultdict(list)
        self._answers: list[tuple[re.Pattern[str], Answer]] = []
        self._lock = threading.Lock()

    def answer(self, pattern: str, reply: Answer) -> None:
        """Commands that contain a match of `pattern` get `reply` (the latest match wins)."""
        self._answers.insert(0, (re.compile(pattern), reply))

    def __call__(self, target: SSHTarget, timeout: float = 10.0) -> FakeSession:
        if self.latency.connect_s:
            time.sleep(self.latency.connect_s)
        self.check_up(target.host_key_id)
        with self._lock:
            self.connects += 1
        return FakeSession(self, target.host_key_id)

    def check_up(self, instance_id: str) -> None:
        if instance_id in self.down:
            raise SSHConnectError(f"cannot reach {instance_id}: connection refused")

    def reply(self, instance_id: str, command: str) -> CommandResult:
        with self._lock:
            self.commands[instance_id].append(command)
        for pattern, reply in self._answers:
            if pattern.search(command):
                return reply(command) if callable(reply) else reply
        return CommandResult(0, "", "")


class FakeSession:
    """One session to a fake instance; the subset of jobs.ssh.SSHSession the stages use."""

    def __init__(self, ssh: FakeSSH, instance_id: str) -> None:
        self._ssh, self.instance_id = ssh, instance_id
        self._files = ssh.files[instance_id]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(
        self,
        command: str,
        *,
        timeout: float = 60.0,
        check: bool = False,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        if self._ssh.latency.command_s:
            time.sleep(self._ssh.latency.command_s)
        self._ssh.check_up(self.instance_id)
        result = self._ssh.reply(self.instance_id, command)
        if check and result.exit_status != 0:
            raise CommandFailed(command, result)
        return result

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        self.put_bytes(local.read_bytes(), remote, mode=mode)

    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        self._ssh.check_up(self.instance_id)
        self._files[remote] = data

    def get(self, remote: str, local: Path) -> None:
        self._ssh.check_up(self.instance_id)
        if remote not in self._files:
            raise RemotePathError(f"get {remote} on {self.instance_id}: no such file")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self._files[remote])

    def get_dir(self, remote_dir: str, local_dir: Path) -> None:
        self._ssh.check_up(self.instance_id)
        prefix = remote_dir.rstrip("/") + "/"
        found = {p: data for p, data in self._files.items() if p.startswith(prefix)}
        if not found:
            raise RemotePathError(f"get_dir {remote_dir} on {self.instance_id}: no such directory")
        for path, data in found.items():
            target = local_dir.joinpath(*posixpath.relpath(path, prefix).split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def makedirs(self, remote: str) -> None:
        self._ssh.check_up(self.instance_id)

    def close(self) -> None:
        """Nothing to release."""
