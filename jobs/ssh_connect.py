"""Opening an SSH connection to an instance: TCP, the handshake, the host key pinned per
instance on first connect, authentication with our key pair (generated on first use).

Transient failures (refused, timeout, reset, banner) are retried with backoff; a rejected key
or a changed host key raises at once (the errors are jobs.ssh's).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
from contextlib import suppress
from pathlib import Path

import paramiko
import tenacity
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from jobs.ssh import HostKeyMismatch, SSHAuthError, SSHConnectError, SSHError, SSHSession, SSHTarget

log = logging.getLogger(__name__)

PRIVATE_KEY_MODE = 0o600


def connect(target: SSHTarget, *, timeout: float = 10.0, attempts: int = 3) -> SSHSession:
    """Connect and authenticate with our key. Transient failures are retried with backoff
    (`attempts` tries in all, each bounded by `timeout` for connect, banner, handshake and
    auth); a rejected key or a changed host key raises at once."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, SSHError) and exc.retryable),
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
    """Load an unencrypted private key (any type paramiko reads). Parsed once while the file
    is unchanged: parsing an ed25519 key derives its public half (~1 ms), and a watchdog
    connecting to thousands of instances would otherwise do it per connection."""
    try:
        status = path.stat()
        return _parsed_private_key(path, status.st_mtime_ns, status.st_size, status.st_ino)
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise SSHAuthError(f"cannot load private key {path}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _parsed_private_key(path: Path, mtime_ns: int, size: int, inode: int) -> paramiko.PKey:
    """The key at `path` as it was at (`mtime_ns`, `size`, `inode`); a changed file is a new
    cache entry. Keys sign statelessly, so threads share them."""
    return paramiko.PKey.from_path(path)


def ensure_private_key(keys_dir: Path, name: str = "saefleet") -> Path:
    """The path of our ed25519 key `keys_dir/name` (mode 0600), generated on first use.
    Concurrent callers agree on one key."""
    path = keys_dir / name
    if not path.exists():
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
        )
        _create_once(path, private, PRIVATE_KEY_MODE)
    return path


def ensure_keypair(keys_dir: Path, name: str = "saefleet") -> tuple[Path, str]:
    """Our key `keys_dir/name` as `ensure_private_key` makes it: its path and its OpenSSH
    public key line."""
    path = ensure_private_key(keys_dir, name)
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
