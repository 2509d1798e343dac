"""Process helpers: a process's state from /proc, waiting for several processes to exit, and
pid files that reject a reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from queue_app.processes import process_state, read_pidfile, wait_gone, write_pidfile

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_stopped_process_is_in_state_t_until_it_continues() -> None:
    proc = subprocess.Popen(SLEEP)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_for_state(proc.pid, "T")
        os.kill(proc.pid, signal.SIGCONT)
        assert wait_for_state(proc.pid, "S")
    finally:
        proc.kill()
        proc.wait()
    assert process_state(proc.pid) is None


def wait_for_state(pid: int, state: str) -> bool:
    """Whether `pid` reaches `state` within 5 s (signals are delivered asynchronously)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if process_state(pid) == state:
            return True
        time.sleep(0.01)
    return False


def test_wait_gone_waits_for_every_process_of_a_group() -> None:
    procs = [subprocess.Popen(SLEEP) for _ in range(2)]
    try:
        pids = {p.pid for p in procs}
        assert not wait_gone(pids, 0.1)
        procs[0].kill()
        assert not wait_gone(pids, 0.1)  # one still runs
        procs[1].kill()
        assert wait_gone(pids, 5.0)  # our children, reaped by wait_gone
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_pid_file_naming_another_program_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.pid"
    write_pidfile(path, os.getpid())
    assert read_pidfile(path) == os.getpid()
    assert read_pidfile(path, "no-such-program --flag") is None
    assert not path.exists()
