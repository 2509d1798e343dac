"""The fake SSH fails the way jobs.ssh does (our errors, the same retryable ones) and copies
files the way the stages expect."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.ssh import CommandFailed, CommandResult, RemotePathError, SSHConnectError, SSHTarget
from jobs.ssh_fake import FakeSSH


def _target(tmp_path: Path) -> SSHTarget:
    return SSHTarget("127.0.0.1", 22, "ubuntu", tmp_path / "key", "fake-1", tmp_path)


def test_an_unreachable_host_is_a_retryable_connect_error(tmp_path: Path) -> None:
    ssh = FakeSSH()
    session = ssh(_target(tmp_path))
    ssh.down.add("fake-1")
    with pytest.raises(SSHConnectError) as lost:
        session.run("true")
    assert lost.value.retryable
    with pytest.raises(SSHConnectError):
        ssh(_target(tmp_path))
    assert ssh.connects == 1


def test_commands_get_the_latest_matching_answer(tmp_path: Path) -> None:
    ssh = FakeSSH()
    ssh.answer("^false", CommandResult(1, "", "no"))
    ssh.answer("^false now", CommandResult(2, "", "really no"))
    with ssh(_target(tmp_path)) as session:
        assert session.run("echo hi") == CommandResult(0, "", "")
        assert session.run("false").exit_status == 1
        with pytest.raises(CommandFailed) as failed:
            session.run("false now", check=True)
    assert (failed.value.exit_status, failed.value.retryable) == (2, False)
    assert ssh.commands["fake-1"] == ["echo hi", "false", "false now"]


def test_files_round_trip_and_a_missing_one_is_a_remote_path_error(tmp_path: Path) -> None:
    ssh = FakeSSH()
    with ssh(_target(tmp_path)) as session:
        session.put_bytes(b"a", "/w/run/final/a.txt")
        session.put_bytes(b"b", "/w/run/final/sub/b.txt")
        session.get_dir("/w/run/final", tmp_path / "final")
        with pytest.raises(RemotePathError):
            session.get("/w/missing", tmp_path / "missing")
    assert (tmp_path / "final" / "sub" / "b.txt").read_bytes() == b"b"
    assert sorted(p.name for p in (tmp_path / "final").rglob("*.txt")) == ["a.txt", "b.txt"]
