"""Checkpoint directories: `checkpoints/step-<10 digits>/` holding `state.pt` (everything needed
to resume), `config.json` (the run config) and `manifest.json` (size and SHA-256 of each file).

A checkpoint is written into a hidden temp directory, every file fsynced, the manifest last,
then renamed into place and the parent fsynced: a reader sees a whole checkpoint or none. It
holds no absolute path, so a copied checkpoint directory verifies and loads anywhere.

Torch-free: the control plane verifies pulled copies with it (the state arrives as bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from sae.atomic_files import fsync_dir

PREFIX = "step-"
MANIFEST = "manifest.json"
STATE = "state.pt"
CONFIG = "config.json"
FORMAT = "saefleet-sae-checkpoint/1"


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint at `step` (names sort by step)."""
    return f"{PREFIX}{step:010d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_checkpoint(
    checkpoints_dir: Path, step: int, tokens: int, state: bytes, config_json: str
) -> Path:
    """Write the checkpoint of `step` atomically and return its directory. An existing valid
    checkpoint of the same step is kept as it is (same step, same state)."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(step)
    if final.exists():
        if verify_checkpoint(final):
            return final
        shutil.rmtree(final)
    temp = checkpoints_dir / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    _write_synced(temp / STATE, state)
    _write_synced(temp / CONFIG, config_json.encode())
    files = {
        name: {"bytes": (temp / name).stat().st_size, "sha256": _sha256(temp / name)}
        for name in (STATE, CONFIG)
    }
    manifest = {"format": FORMAT, "step": step, "tokens": tokens, "files": files}
    _write_synced(temp / MANIFEST, json.dumps(manifest, indent=2).encode())
    fsync_dir(temp)
    os.replace(temp, final)
    fsync_dir(checkpoints_dir)
    return final


def verify_checkpoint(path: Path | str) -> bool:
    """True when the manifest is readable and every file it lists has its size and checksum."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or set(files) != {STATE, CONFIG}:
            return False
        return all(
            (path / name).stat().st_size == meta["bytes"] and _sha256(path / name) == meta["sha256"]
            for name, meta in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(checkpoints_dir: Path | str) -> list[Path]:
    """Checkpoint directories, oldest first (valid or not)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_valid_checkpoint(checkpoints_dir: Path | str) -> Path | None:
    """The newest checkpoint that verifies (a corrupt newer one is skipped), or None."""
    for path in reversed(list_checkpoints(checkpoints_dir)):
        if verify_checkpoint(path):
            return path
    return None


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and leftover temp directories."""
    for stale in checkpoints_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
