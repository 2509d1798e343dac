"""The processes of a local instance: its OpenSSH `sshd` on a loopback port, and every process
that runs in its sessions, found in /proc and stopped.

sshd hands every session `SAEFLEET_LOCAL_INSTANCE=<id>` (SetEnv); that marker survives
`setsid nohup`, so `stop_instance_processes` finds what ran on the instance, detached or not,
together with the descendants of the instance's sshd (recognised by its config path, resolved:
two homes may reach one instance folder by different paths, e.g. through a symlink).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

from jobs.providers.errors import PermanentProviderError, ProviderError
from queue_app.processes import (
    free_port,
    pid_alive,
    process_state,
    spawn_detached,
    wait_gone,
)
from queue_app.processes import sshd_binary as find_sshd

HOST = "127.0.0.1"
"""Where every instance's sshd listens."""
INSTANCE_ENV_VAR = "SAEFLEET_LOCAL_INSTANCE"
"""Set in every session of an instance; marks the processes that belong to it."""
SSHD_START_TIMEOUT_S = 10.0
SSHD_PRIVSEP_DIR = Path("/run/sshd")
_PORT_ATTEMPTS = 5
_KILL_ROUNDS = 20


# ---- sshd -----------------------------------------------------------------------------------


def _sshd_config(directory: Path, instance_id: str, user: str, port: int) -> str:
    return f"""\
Port {port}
ListenAddress {HOST}
HostKey "{directory / "ssh_host_ed25519_key"}"
PidFile "{directory / "sshd.pid"}"
AuthorizedKeysFile "{directory / "authorized_keys"}"
AllowUsers {user}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
ClientAliveInterval 15
ClientAliveCountMax 4
Subsystem sftp internal-sftp
SetEnv {INSTANCE_ENV_VAR}={instance_id} "HOME={directory / "home"}"
"""


def start_sshd(directory: Path, instance_id: str, user: str) -> tuple[int, int]:
    """Start the instance's sshd detached (it outlives us, like a VM) on a free loopback port;
    returns (pid, port) once it listens."""
    sshd = find_sshd()
    if os.geteuid() == 0:
        SSHD_PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd as root refuses to start without
    config, log_path = directory / "sshd_config", directory / "sshd.log"
    for _ in range(_PORT_ATTEMPTS):
        port = free_port(HOST)
        config.write_text(_sshd_config(directory, instance_id, user, port))
        log_start = log_path.stat().st_size if log_path.exists() else 0
        pid = spawn_detached([sshd, "-D", "-e", "-f", str(config)], log_path, env=_sshd_env())
        failure = _await_listening(pid, port, log_path, log_start)
        if failure is None:
            return pid, port
        if "Address already in use" not in failure:  # else another process took the port
            tail = " | ".join(failure.strip().splitlines()[-3:])
            raise PermanentProviderError(f"sshd of {instance_id} did not start: {tail}")
    raise ProviderError(f"sshd of {instance_id}: no free port after {_PORT_ATTEMPTS} tries")


def _await_listening(pid: int, port: int, log_path: Path, log_start: int) -> str | None:
    """None once sshd logs that it listens; its log output if it exited instead."""
    listening = f"Server listening on {HOST} port {port}"
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        output = log_path.read_bytes()[log_start:].decode(errors="replace")
        if listening in output:
            return None
        if not pid_alive(pid):
            return output
        time.sleep(0.02)
    _signal_all({pid}, signal.SIGKILL)
    raise ProviderError(f"sshd (pid {pid}) not listening after {SSHD_START_TIMEOUT_S:g}s")


def sshd_runs(pid: int, sshd_config: Path) -> bool:
    """The process `pid` runs and is the sshd started with `sshd_config` (not a reused pid),
    whichever path to that file it was started with."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _is_sshd_with_config(argv, sshd_config.resolve())


def _sshd_env() -> dict[str, str]:
    """sshd builds each session's environment itself; it needs nothing of ours."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


# ---- the instance's processes -----------------------------------------------------------------


def _instance_pids(instance_id: str, sshd_config: Path) -> set[int]:
    """Live processes of the instance: its sshd (recognised by its config path) with all
    descendants (connections, sessions), and every process whose environment carries the
    instance marker (detached ones included)."""
    marker = f"{INSTANCE_ENV_VAR}={instance_id}".encode()
    config = sshd_config.resolve()
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes()
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if fields[0] == "Z":
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        if marker in environ.split(b"\0") or _is_sshd_with_config(argv, config):
            found.add(pid)
    pending = list(found)
    while pending:
        pid = pending.pop()
        found.add(pid)
        pending.extend(children.get(pid, []))
    found.discard(os.getpid())
    return found


def _is_sshd_with_config(argv: bytes, config: Path) -> bool:
    """True for an sshd started with the config file `config` (a resolved path), by any path
    to it, also after it retitled itself ("sshd: /usr/sbin/sshd -D -e -f <config> [listener]")."""
    program = argv.split(b"\0")[0].split(b" ")[0].rstrip(b":")
    if program.rsplit(b"/", 1)[-1] != b"sshd":
        return False
    args = [a for a in argv.split(b"\0") if a]
    words = args if b"-f" in args else args[0].split(b" ")
    if b"-f" not in words[:-1]:
        return False
    given = Path(os.fsdecode(words[words.index(b"-f") + 1]))
    try:
        return given.resolve() == config
    except OSError:
        return False


def stop_instance_processes(instance_id: str, sshd_config: Path, grace_s: float) -> None:
    """SIGTERM the instance's processes and wait up to `grace_s`, then SIGKILL whatever is
    left, rescanning until nothing of the instance runs (catches forks in flight)."""
    if grace_s > 0:
        pids = _instance_pids(instance_id, sshd_config)
        _signal_all(pids, signal.SIGTERM)
        wait_gone({pid for pid in pids if not _is_stopped(pid)}, grace_s)
    for _ in range(_KILL_ROUNDS):
        pids = _instance_pids(instance_id, sshd_config)
        if not pids:
            return
        _signal_all(pids, signal.SIGKILL)
        wait_gone(pids, 1.0)
    raise ProviderError(f"processes of local instance {instance_id} survive SIGKILL: {pids}")


def _is_stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): a frozen sshd that only SIGKILL will end."""
    return process_state(pid) == "T"


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
