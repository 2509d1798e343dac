"""The SSH session against a real sshd (a local-provider instance): commands, atomic transfers,
error mapping, targets, and a reverse port forward (connecting: test_ssh_connect.py)."""

from __future__ import annotations

import os
import select
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest

from jobs.providers.base import Instance
from jobs.providers.local import LocalProvider
from jobs.ssh import (
    CommandFailed,
    CommandTimeout,
    RemotePathError,
    SSHConnectError,
    SSHSession,
    SSHTarget,
)

pytestmark = pytest.mark.sshd


# ---- commands -----------------------------------------------------------------------------


def test_run_returns_exit_status_and_both_streams(ssh_session: SSHSession) -> None:
    result = ssh_session.run("echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_exports_env_values_verbatim(ssh_session: SSHSession) -> None:
    value = 'it\'s $HOME `id` "quoted"'
    assert ssh_session.run('printf %s "$VALUE"', env={"VALUE": value}).stdout == value


def test_check_raises_command_failed_without_env_values(ssh_session: SSHSession) -> None:
    command = 'test -n "$TOKEN"; echo boom >&2; exit 7'
    with pytest.raises(CommandFailed) as failed:
        ssh_session.run(command, check=True, env={"TOKEN": "s3cret-token"})
    error = failed.value
    assert (error.exit_status, error.stderr, error.command) == (7, "boom\n", command)
    assert not error.retryable
    assert "status 7" in str(error) and "boom" in str(error)
    assert "s3cret-token" not in str(error)


def test_long_command_is_shortened_in_messages(ssh_session: SSHSession) -> None:
    command = "false " + "x" * 1000
    with pytest.raises(CommandFailed) as failed:
        ssh_session.run(command, check=True)
    assert len(str(failed.value)) < 200
    assert failed.value.command == command


def test_timeout_is_transient_and_the_session_stays_usable(ssh_session: SSHSession) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as timed_out:
        ssh_session.run("sleep 5", timeout=0.3)
    assert timed_out.value.retryable
    assert time.monotonic() - started < 2
    assert ssh_session.run("echo still here").stdout == "still here\n"


def test_lost_connection_is_transient(
    local_provider: LocalProvider, local_instance: Instance, ssh_session: SSHSession
) -> None:
    local_provider.preempt(local_instance.id)
    with pytest.raises(SSHConnectError) as lost:
        ssh_session.run("true")
    assert lost.value.retryable


# ---- transfers ----------------------------------------------------------------------------


def test_put_replaces_the_remote_file_atomically(
    ssh_session: SSHSession, local_instance: Instance, tmp_path: Path
) -> None:
    remote = f"{local_instance.workdir}/data.bin"
    ssh_session.put_bytes(b"old", remote)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    sizes_seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # the instance's disk is this machine's: watch the target directly
        while not done.is_set():
            sizes_seen.add(os.stat(remote).st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ssh_session.put(big, remote)
    finally:
        done.set()
        watcher.join()
    assert Path(remote).read_bytes() == big.read_bytes()
    assert sizes_seen <= {3, 8 << 20}
    assert ssh_session.listdir(local_instance.workdir) == ["data.bin"]


def test_put_bytes_applies_mode(ssh_session: SSHSession, local_instance: Instance) -> None:
    remote = f"{local_instance.workdir}/secret"
    ssh_session.put_bytes(b"s3cret", remote, mode=0o600)
    assert stat.S_IMODE(os.stat(remote).st_mode) == 0o600
    assert Path(remote).read_bytes() == b"s3cret"


def test_put_into_missing_directory_is_a_remote_path_error(
    ssh_session: SSHSession, local_instance: Instance
) -> None:
    with pytest.raises(RemotePathError) as failed:
        ssh_session.put_bytes(b"x", f"{local_instance.workdir}/missing/file")
    assert not failed.value.retryable
    assert ssh_session.listdir(local_instance.workdir) == []


def test_get_replaces_local_file_and_a_failed_get_keeps_it(
    ssh_session: SSHSession, local_instance: Instance, tmp_path: Path
) -> None:
    Path(local_instance.workdir, "result.txt").write_text("new")
    local = tmp_path / "out" / "result.txt"
    local.parent.mkdir()
    local.write_text("old")
    ssh_session.get(f"{local_instance.workdir}/result.txt", local)
    assert local.read_text() == "new"
    with pytest.raises(RemotePathError):
        ssh_session.get(f"{local_instance.workdir}/missing.txt", local)
    assert local.read_text() == "new"
    assert sorted(p.name for p in local.parent.iterdir()) == ["result.txt"]


def test_get_dir_copies_a_tree_and_replaces_the_old_copy(
    ssh_session: SSHSession, local_instance: Instance, tmp_path: Path
) -> None:
    remote = Path(local_instance.workdir, "ckpt")
    (remote / "sub" / "deeper").mkdir(parents=True)
    (remote / "weights.bin").write_bytes(b"w" * 100_000)
    (remote / "sub" / "deeper" / "meta.json").write_text("{}")
    local = tmp_path / "pulled" / "ckpt"
    local.mkdir(parents=True)
    (local / "stale.txt").write_text("from an earlier pull")
    ssh_session.get_dir(str(remote), local)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*")) == [
        "sub",
        "sub/deeper",
        "sub/deeper/meta.json",
        "weights.bin",
    ]
    assert (local / "weights.bin").read_bytes() == b"w" * 100_000
    assert [p.name for p in local.parent.iterdir()] == ["ckpt"]


def test_failed_get_dir_keeps_the_existing_copy(
    ssh_session: SSHSession, local_instance: Instance, tmp_path: Path
) -> None:
    local = tmp_path / "pulled" / "ckpt"
    local.mkdir(parents=True)
    (local / "kept.txt").write_text("kept")
    with pytest.raises(RemotePathError):
        ssh_session.get_dir(f"{local_instance.workdir}/missing", local)
    assert (local / "kept.txt").read_text() == "kept"
    assert [p.name for p in local.parent.iterdir()] == ["ckpt"]


def test_makedirs_exists_listdir(ssh_session: SSHSession, local_instance: Instance) -> None:
    base = local_instance.workdir
    ssh_session.makedirs(f"{base}/a/b/c")
    ssh_session.makedirs(f"{base}/a/b/c/")  # again: no error
    assert ssh_session.exists(f"{base}/a/b/c")
    assert not ssh_session.exists(f"{base}/nope")
    ssh_session.put_bytes(b"", f"{base}/a/file")
    assert ssh_session.listdir(f"{base}/a") == ["b", "file"]
    with pytest.raises(RemotePathError):
        ssh_session.makedirs(f"{base}/a/file/sub")


# ---- targets -----------------------------------------------------------------------------


def test_target_rejects_a_host_key_id_that_is_not_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host_key_id"):
        SSHTarget("127.0.0.1", 22, "root", tmp_path / "k", "../etc/passwd", tmp_path)


# ---- port forwarding (what the tunnel service relies on) -----------------------------------


def _pump(channel: paramiko.Channel, sock: socket.socket) -> None:
    with channel, sock:
        while True:
            readable, _, _ = select.select([channel, sock], [], [], 5)
            if not readable:
                return
            for source, sink in ((channel, sock), (sock, channel)):
                if source in readable:
                    data = source.recv(4096)
                    if not data:
                        return
                    sink.sendall(data)


def test_remote_process_reaches_a_local_server_through_a_reverse_forward(
    ssh_session: SSHSession,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as local_server:
        local_port = local_server.getsockname()[1]

        def answer_ping() -> None:
            client, _ = local_server.accept()
            with client:
                if client.recv(16) == b"PING":
                    client.sendall(b"PONG")

        def forward(
            channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]
        ) -> None:
            sock = socket.create_connection(("127.0.0.1", local_port))
            threading.Thread(target=_pump, args=(channel, sock), daemon=True).start()

        answerer = threading.Thread(target=answer_ping)
        answerer.start()
        remote_port = ssh_session.forward_remote_port(0, forward)
        assert remote_port > 0
        script = (
            f"import socket; s = socket.create_connection(('127.0.0.1', {remote_port})); "
            "s.sendall(b'PING'); print(s.recv(16).decode())"
        )
        result = ssh_session.run(f'{sys.executable} -c "{script}"', timeout=20, check=True)
        answerer.join(timeout=5)
        ssh_session.transport.cancel_port_forward("127.0.0.1", remote_port)
    assert result.stdout.strip() == "PONG"
