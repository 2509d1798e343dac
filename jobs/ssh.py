"""The SSH layer: one paramiko connection to an instance (`SSHSession`), commands with exit
status, SFTP transfers that land atomically. Opening a connection (host keys pinned per
instance, the client key pair) is jobs.ssh_connect's.

paramiko, socket and SFTP exceptions are converted to ours here and in jobs.ssh_connect, nowhere
else:

SSHError                 a jobs.errors.JobsError; `retryable` says whether retrying may help
├── SSHConnectError      retryable: refused, timeout, reset, no route, banner/EOF, connection lost
├── CommandTimeout       retryable: a command ran past its timeout (the channel was closed)
├── SSHAuthError         not retryable: the key was rejected or cannot be loaded
├── HostKeyMismatch      not retryable: the host key differs from the one pinned on first connect
├── CommandFailed        not retryable: `run(check=True)` saw a non-zero exit status
└── RemotePathError      not retryable: an SFTP operation failed on a path (missing, permissions)

Remote paths should be absolute: SFTP resolves relative ones against the login directory.
Messages carry a command's text (shortened) and a failed command's stderr tail, never the `env`
values passed to `run` or key material.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import secrets
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import paramiko

from jobs.errors import JobsError
from sae.atomic_files import atomic_writer, fsync_dir

SFTP_IO_TIMEOUT_S = 60.0
"""A transfer fails (SSHConnectError) after this long without progress."""
_CHUNK = 1 << 16
_POLL_S = 0.05
_HOST_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

ForwardHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]
"""Called with each forwarded connection: (channel, origin address, server address)."""


class SSHError(JobsError):
    """An SSH operation failed."""


class SSHConnectError(SSHError):
    """The connection could not be made or was lost; retrying may help."""

    retryable = True


class CommandTimeout(SSHError):
    """A command did not finish within its timeout."""

    retryable = True


class SSHAuthError(SSHError):
    """The server rejected our key, or the key cannot be loaded."""


class HostKeyMismatch(SSHError):
    """The server's host key is not the one pinned for this instance."""


class RemotePathError(SSHError):
    """An SFTP operation failed on a remote path (missing, not a directory, permissions)."""


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    """The command's exit status; -1 when it was killed by a signal."""
    stdout: str
    stderr: str


class CommandFailed(SSHError):
    """`run(check=True)` saw a non-zero exit status."""

    def __init__(self, command: str, result: CommandResult) -> None:
        stderr_tail = result.stderr.strip()[-400:]
        super().__init__(
            f"command exited with status {result.exit_status}: {shorten(command)}"
            + (f"; stderr: {stderr_tail}" if stderr_tail else "")
        )
        self.command = command
        self.exit_status = result.exit_status
        self.stdout = result.stdout
        self.stderr = result.stderr


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect and as whom."""

    host: str
    port: int
    user: str
    key_path: Path
    """Our private key."""
    host_key_id: str
    """Names the pinned host key (usually the instance id: loopback ports get reused)."""
    known_hosts_dir: Path
    """One file per host_key_id holding the key pinned on first connect."""

    def __post_init__(self) -> None:
        if not _HOST_KEY_ID.fullmatch(self.host_key_id):
            raise ValueError(f"host_key_id {self.host_key_id!r} is not a safe file name")

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} ({self.host_key_id})"


def shorten(text: str, limit: int = 120) -> str:
    """`text` on one line, cut to `limit` characters (commands in messages and logs)."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Convert paramiko, socket and SFTP exceptions raised while doing `what` into ours."""
    try:
        yield
    except SSHError:
        raise
    except (paramiko.SSHException, EOFError, TimeoutError, ConnectionError) as exc:
        raise SSHConnectError(f"{what}: connection lost ({exc or type(exc).__name__})") from exc
    except OSError as exc:  # SFTP status replies arrive as IOError with an errno
        raise RemotePathError(f"{what}: {exc.strerror or exc}") from exc


class SSHSession:
    """One authenticated connection; a context manager. SFTP use is not thread-safe."""

    def __init__(self, transport: paramiko.Transport, target: SSHTarget) -> None:
        self._transport = transport
        self._target = target
        self._sftp_client: paramiko.SFTPClient | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def transport(self) -> paramiko.Transport:
        """The underlying transport (port forwards, keepalives)."""
        return self._transport

    def forward_remote_port(self, remote_port: int, handler: ForwardHandler) -> int:
        """Ask the server to listen on its 127.0.0.1:`remote_port` (0: it picks) and hand
        each connection to `handler(channel, origin, server)` (on paramiko's thread: return
        quickly); returns the port it listens on."""
        with _mapped_errors(f"forward remote port {remote_port} on {self._target}"):
            return self._transport.request_port_forward("127.0.0.1", remote_port, handler)

    def run(
        self,
        command: str,
        *,
        timeout: float = 60.0,
        check: bool = False,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        """Run `command` in the login shell; `env` is exported first (sshd drops SetEnv
        requests it was not told to accept). On timeout the channel is closed; a command
        that ignores the hang-up may keep running on the instance."""
        where = f"run {shorten(command)} on {self._target}"
        with _mapped_errors(where):
            channel = self._transport.open_session(timeout=timeout)
            try:
                channel.exec_command(_with_env(command, env))
                channel.shutdown_write()
                stdout, stderr = _collect_output(channel, timeout, where)
                exit_status = channel.recv_exit_status()
            finally:
                channel.close()
            if exit_status == -1 and not self._transport.is_active():
                raise SSHConnectError(f"{where}: connection lost")
        result = CommandResult(
            exit_status,
            stdout.decode("utf-8", errors="replace"),
            stderr.decode("utf-8", errors="replace"),
        )
        if check and exit_status != 0:
            raise CommandFailed(command, result)
        return result

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Upload a file; it appears at `remote` complete or not at all."""
        with open(local, "rb") as source:
            self._upload(source, remote, mode)

    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        """Upload `data`; `mode` is applied before any byte is written (secrets: 0o600)."""
        self._upload(io.BytesIO(data), remote, mode)

    def get(self, remote: str, local: Path) -> None:
        """Download a file; `local` (mode 0600) is replaced complete or not at all."""
        with atomic_writer(local, mode=0o600) as destination:
            self._download(remote, destination)

    def get_dir(self, remote_dir: str, local_dir: Path) -> None:
        """Copy a remote tree (regular files and directories; links are skipped) into a
        staging directory next to `local_dir`, then rename it into place. An existing
        `local_dir` is renamed aside first and removed after, so a failed copy leaves it intact."""
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(dir=local_dir.parent, prefix=f".{local_dir.name}.", suffix=".part")
        )
        try:
            self._download_tree(remote_dir, staging)
            if local_dir.exists():
                aside = local_dir.with_name(f".{local_dir.name}.old-{secrets.token_hex(4)}")
                os.rename(local_dir, aside)
                os.rename(staging, local_dir)
                shutil.rmtree(aside)
            else:
                os.rename(staging, local_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(local_dir.parent)

    def makedirs(self, remote: str) -> None:
        """`mkdir -p` over SFTP."""
        with _mapped_errors(f"makedirs {remote} on {self._target}"):
            self._makedirs(remote.rstrip("/") or "/")

    def exists(self, remote: str) -> bool:
        with _mapped_errors(f"stat {remote} on {self._target}"):
            try:
                self._sftp.stat(remote)
            except FileNotFoundError:
                return False
        return True

    def listdir(self, remote: str) -> list[str]:
        """Names in a remote directory, sorted."""
        with _mapped_errors(f"listdir {remote} on {self._target}"):
            return sorted(self._sftp.listdir(remote))

    def close(self) -> None:
        """Close SFTP and the connection; safe to call twice."""
        if self._sftp_client is not None:
            with suppress(Exception):
                self._sftp_client.close()
            self._sftp_client = None
        self._transport.close()

    # ---- internals ------------------------------------------------------------------------

    @property
    def _sftp(self) -> paramiko.SFTPClient:
        """The session's SFTP client, opened on first use (call inside _mapped_errors)."""
        if self._sftp_client is None:
            client = paramiko.SFTPClient.from_transport(self._transport)
            channel = client.get_channel() if client is not None else None
            if client is None or channel is None:
                raise SSHConnectError(f"sftp on {self._target}: no channel")
            channel.settimeout(SFTP_IO_TIMEOUT_S)
            self._sftp_client = client
        return self._sftp_client

    def _upload(self, source: BinaryIO, remote: str, mode: int | None) -> None:
        tmp = f"{remote}.tmp-{secrets.token_hex(4)}"
        try:
            with _mapped_errors(f"put {remote} on {self._target}"):
                with self._sftp.open(tmp, "wb") as destination:
                    if mode is not None:
                        destination.chmod(mode)
                    destination.set_pipelined(True)
                    shutil.copyfileobj(source, destination, _CHUNK)
                self._sftp.posix_rename(tmp, remote)
        except BaseException:
            with suppress(SSHError), _mapped_errors(f"remove {tmp}"):
                self._sftp.remove(tmp)
            raise

    def _download(self, remote: str, destination: BinaryIO) -> None:
        where = f"get {remote} from {self._target}"
        with _mapped_errors(where):
            source = self._sftp.open(remote, "rb")
        try:
            with _mapped_errors(where):
                source.prefetch(source.stat().st_size)
            while True:
                with _mapped_errors(where):
                    chunk = source.read(_CHUNK)
                if not chunk:
                    break
                destination.write(chunk)
        finally:
            with suppress(SSHError), _mapped_errors(where):
                source.close()

    def _download_tree(self, remote_dir: str, local_dir: Path) -> None:
        with _mapped_errors(f"listdir {remote_dir} on {self._target}"):
            entries = self._sftp.listdir_attr(remote_dir)
        for entry in entries:
            remote = posixpath.join(remote_dir, entry.filename)
            mode = entry.st_mode or 0
            if stat.S_ISDIR(mode):
                (local_dir / entry.filename).mkdir()
                self._download_tree(remote, local_dir / entry.filename)
            elif stat.S_ISREG(mode):
                self.get(remote, local_dir / entry.filename)

    def _makedirs(self, path: str) -> None:
        try:
            attributes = self._sftp.stat(path)
        except FileNotFoundError:
            parent = posixpath.dirname(path)
            if parent not in ("", path):
                self._makedirs(parent)
            try:
                self._sftp.mkdir(path)
            except OSError:
                if not stat.S_ISDIR(self._sftp.stat(path).st_mode or 0):
                    raise  # not a concurrent mkdir of the same directory
            return
        if not stat.S_ISDIR(attributes.st_mode or 0):
            raise RemotePathError(f"makedirs: {path} exists and is not a directory")


def _with_env(command: str, env: dict[str, str] | None) -> str:
    if not env:
        return command
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f"export {exports}; {command}"


def _collect_output(channel: paramiko.Channel, timeout: float, where: str) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the exit status arrives (it follows all output)."""
    deadline = time.monotonic() + timeout
    stdout, stderr = bytearray(), bytearray()
    stdout_closed = False
    while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandTimeout(f"{where}: no exit status after {timeout:g}s")
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(_CHUNK)
        if stdout_closed:
            channel.status_event.wait(min(remaining, _POLL_S))
            continue
        channel.settimeout(min(remaining, _POLL_S))
        try:
            chunk = channel.recv(_CHUNK)
        except TimeoutError:
            continue
        if chunk:
            stdout += chunk
        else:
            stdout_closed = True
    return bytes(stdout), bytes(stderr)
