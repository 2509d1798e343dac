"""Atomic file writes: a file is replaced whole or not at all, never seen half written.

The new content goes to a temp file beside the target, is fsynced, renamed over the target
(`os.replace`), and the directory is fsynced so the rename survives a crash. Every package of
saefleet writes its files through here (this package imports nothing of ours, so all can).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: Path, mode: int = 0o666, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write the new content of `path` into; on a clean exit it replaces
    `path`, on an exception it is removed and `path` stays as it was. `mode` is the new file's
    permission bits (before the umask). `durable=False` skips both fsyncs: for a file rewritten
    every few seconds whose loss in a crash costs nothing (a heartbeat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            temp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` (text is written as UTF-8); see `atomic_writer`."""
    with atomic_writer(path, durable=durable) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
