"""Opening SSH connections against a real sshd (a local-provider instance) and fake servers:
host key pinning, the errors of a failed connect, and the key pair."""

from __future__ import annotations

import multiprocessing
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.providers.base import Instance
from jobs.ssh import HostKeyMismatch, SSHAuthError, SSHConnectError, SSHTarget
from jobs.ssh_connect import connect, ensure_keypair, ensure_private_key, load_private_key
from queue_app.processes import free_port
from tests.jobs.conftest import LaunchLocal, TargetFor

pytestmark = pytest.mark.sshd


# ---- connecting ---------------------------------------------------------------------------


def test_host_key_is_pinned_by_id_and_a_changed_key_is_rejected(
    launch_local: LaunchLocal, ssh_target_for: TargetFor
) -> None:
    first, second = launch_local("sf-pin-1"), launch_local("sf-pin-2")
    target = ssh_target_for(first)
    with connect(target):
        pass
    assert (target.known_hosts_dir / first.id).read_text().startswith("ssh-ed25519 ")
    with connect(target):  # the same key again: accepted
        pass
    # Another server answering for the pinned id (a relaunch reusing the id) is rejected at once.
    impostor = ssh_target_for(second, host_key_id=first.id)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch) as mismatch:
        connect(impostor)
    assert not mismatch.value.retryable
    assert time.monotonic() - started < 0.5  # not retried
    assert first.id in str(mismatch.value)


def test_connect_to_a_dead_port_is_transient_after_retries(tmp_path: Path) -> None:
    key, _ = ensure_keypair(tmp_path / "keys")
    target = SSHTarget("127.0.0.1", free_port(), "root", key, "dead", tmp_path / "known")
    started = time.monotonic()
    with pytest.raises(SSHConnectError) as refused:
        connect(target, timeout=1.0, attempts=2)
    assert refused.value.retryable
    assert 0.4 < time.monotonic() - started < 3  # one backoff between two attempts


@pytest.fixture
def bad_ssh_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server that greets with garbage and closes; yields its port and a stop event."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            with client:
                client.sendall(b"not an ssh server\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    yield server.getsockname()[1], stop
    stop.set()
    thread.join()
    server.close()


def test_a_bad_banner_is_a_connect_error(
    bad_ssh_server: tuple[int, threading.Event], tmp_path: Path
) -> None:
    key, _ = ensure_keypair(tmp_path / "keys")
    port, _ = bad_ssh_server
    target = SSHTarget("127.0.0.1", port, "root", key, "bad", tmp_path / "known")
    with pytest.raises(SSHConnectError) as failed:
        connect(target, timeout=1.0, attempts=1)
    assert failed.value.retryable


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    key, _ = ensure_keypair(tmp_path / "keys")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog) but never speaks
        target = SSHTarget("127.0.0.1", silent.getsockname()[1], "root", key, "x", tmp_path)
        started = time.monotonic()
        with pytest.raises(SSHConnectError):
            connect(target, timeout=0.5, attempts=1)
        assert time.monotonic() - started < 3


def test_a_wrong_key_is_an_auth_error_without_retry(
    local_instance: Instance, ssh_target_for: TargetFor, tmp_path: Path
) -> None:
    other_key, _ = ensure_keypair(tmp_path / "other-keys")
    started = time.monotonic()
    with pytest.raises(SSHAuthError) as rejected:
        connect(ssh_target_for(local_instance, key_path=other_key))
    assert not rejected.value.retryable
    assert time.monotonic() - started < 0.5


def test_a_missing_key_file_is_an_auth_error(
    local_instance: Instance, ssh_target_for: TargetFor, tmp_path: Path
) -> None:
    with pytest.raises(SSHAuthError):
        connect(ssh_target_for(local_instance, key_path=tmp_path / "no-such-key"))


# ---- the key pair -------------------------------------------------------------------------


def test_ensure_keypair_is_idempotent_and_private(tmp_path: Path) -> None:
    path, public = ensure_keypair(tmp_path / "keys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public.startswith("ssh-ed25519 ") and public.endswith(" saefleet")
    assert ensure_keypair(tmp_path / "keys") == (path, public)


def test_a_private_key_is_parsed_once_until_its_file_is_replaced(tmp_path: Path) -> None:
    path = ensure_private_key(tmp_path / "keys")
    first = load_private_key(path)
    assert load_private_key(path) is first
    other = ensure_private_key(tmp_path / "other-keys")
    other.replace(path)
    second = load_private_key(path)
    assert second.get_base64() != first.get_base64()
    assert ensure_keypair(tmp_path / "keys")[1].split()[1] == second.get_base64()


def _public_key_line(keys_dir: str) -> str:
    return ensure_keypair(Path(keys_dir))[1]


def test_ensure_keypair_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    # forkserver: children forked from a clean single-threaded server. A fork of this pytest
    # worker copies whatever locks its threads (a moto server, tqdm's monitor) hold at that
    # moment, and a fresh-clone run once hung here for the 600 s timeout.
    with multiprocessing.get_context("forkserver").Pool(8) as pool:
        lines = pool.map(_public_key_line, [str(keys_dir)] * 32)
    assert len(set(lines)) == 1
    assert [p.name for p in keys_dir.iterdir()] == ["saefleet"]
