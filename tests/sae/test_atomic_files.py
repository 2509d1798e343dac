"""Atomic file writes: the target holds the old content or the new, and no temp file stays."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sae.atomic_files import atomic_writer, write_atomic


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "summary.json"
    write_atomic(path, "first")
    write_atomic(path, b"second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_a_failed_write_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "records" / "instance.json"
    write_atomic(path, "old", durable=False)
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("the writer died")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["instance.json"]


def test_the_new_file_gets_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "pulled"
    with atomic_writer(path, mode=0o600) as handle:
        handle.write(b"secret-ish")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
