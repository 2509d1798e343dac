"""The SSH layer: one paramiko connection to an instance, commands with exit status, SFTP
transfers that land atomically, host keys pinned per instance, and the client key pair.

paramiko, socket and SFTP exceptions are converted to ours here and nowhere else:

SSHError                 `transient` says whether retrying may help
├── SSHConnectError      transient: refused, timeout, reset, no route, banner/EOF, connection lost
├── CommandTimeout       transient: a command ran past its timeout (the channel was closed)
├── SSHAuthError         permanent: the key was rejected or cannot be loaded
├── HostKeyMismatch      permanent: the host key differs from the one pinned on first connect
├── CommandFailed        permanent: `run(check=True)` saw a non-zero exit status
└── RemotePathError      permanent: an SFTP operation failed on a path (missing, permissions)

Remote paths should be absolute: SFTP resolves relative ones against the login directory.
Messages carry a command's text (shortened) and a failed command's stderr tail, never the `env`
values passed to `run` or key material.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import secrets
import shlex
import shutil
import socket
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
import tenacity
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sae.atomic_files import atomic_writer, fsync_dir

log = logging.getLogger(__name__)

PRIVATE_KEY_MODE = 0o600
SFTP_IO_TIMEOUT_S = 60.0
"""A transfer fails (SSHConnectError) after this long without progress."""
_CHUNK = 1 << 16
_POLL_S = 0.05
_HOST_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

ForwardHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]
"""Called with each forwarded connection: (channel, origin address, server address)."""


class SSHError(Exception):
    """An SSH operation failed."""

    transient: bool = False


class SSHConnectError(SSHError):
    """The connection could not be made or was lost; retrying may help."""

    transient = True


class CommandTimeout(SSHError):
    """A command did not finish within its timeout."""

    transient = True


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


# ---- connecting ---------------------------------------------------------------------------


def connect(target: SSHTarget, *, timeout: float = 10.0, attempts: int = 3) -> SSHSession:
    """Connect and authenticate with our key. Transient failures are retried with backoff
    (`attempts` tries in all, each bounded by `timeout` for connect, banner, handshake and
    auth); a rejected key or a changed host key raises at once."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, SSHError) and exc.transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=5.0, jitter=0.5),
        before_sleep=lambda state: log.info(
            "ssh %s attempt %d/%d failed: %s",
            target,
            state.attempt_number,
            attempts,
            state.outcome.exception() if state.outcome else "",
        ),
        reraise=True,
    )
    return retrying(_connect_once, target, timeout)


def _connect_once(target: SSHTarget, timeout: float) -> SSHSession:
    key = load_private_key(target.key_path)
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError as exc:
        raise SSHConnectError(f"cannot reach {target}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms per round trip
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = timeout
    transport.auth_timeout = transport.channel_timeout = timeout
    try:
        _handshake(transport, target, key, timeout)
    except BaseException:
        transport.close()
        raise
    log.debug("ssh connected to %s", target)
    return SSHSession(transport, target)


def _handshake(
    transport: paramiko.Transport, target: SSHTarget, key: paramiko.PKey, timeout: float
) -> None:
    """Negotiate, check the host key, authenticate; paramiko errors mapped to ours."""
    try:
        transport.start_client(timeout=timeout)
        _check_host_key(target, transport.get_remote_server_key())
        more_methods = transport.auth_publickey(target.user, key)
    except paramiko.AuthenticationException as exc:
        raise SSHAuthError(f"{target} rejected key {target.key_path}: {exc}") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise SSHConnectError(f"cannot connect to {target}: {exc}") from exc
    if more_methods or not transport.is_authenticated():
        raise SSHAuthError(f"{target}: server wants more than a public key ({more_methods})")


def _check_host_key(target: SSHTarget, key: paramiko.PKey) -> None:
    """Pin the key on first connect for this host_key_id; reject a different one later."""
    presented = f"{key.get_name()} {key.get_base64()}"
    pin = target.known_hosts_dir / target.host_key_id
    target.known_hosts_dir.mkdir(parents=True, exist_ok=True)
    pinned = _create_once(pin, (presented + "\n").encode(), 0o644).decode().strip()
    if pinned != presented:
        raise HostKeyMismatch(
            f"host key of {target} differs from the one pinned in {pin} on first connect; "
            "if the instance was really rebuilt under the same id, delete that file"
        )


def load_private_key(path: Path) -> paramiko.PKey:
    """Load an unencrypted private key (any type paramiko reads)."""
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise SSHAuthError(f"cannot load private key {path}: {exc}") from exc


def ensure_keypair(keys_dir: Path, name: str = "saefleet") -> tuple[Path, str]:
    """Our ed25519 key `keys_dir/name` (mode 0600), generated on first use; returns its path
    and OpenSSH public key line. Concurrent callers agree on one key."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / name
    if not path.exists():
        private = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
        )
        _create_once(path, private, PRIVATE_KEY_MODE)
    key = load_private_key(path)
    return path, f"{key.get_name()} {key.get_base64()} {name}"


def _create_once(path: Path, content: bytes, mode: int) -> bytes:
    """The content of `path`, which is created with `content` if missing. The file appears
    complete (written aside, fsynced, hard-linked into place); the first creator wins."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            with suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    return path.read_bytes()
