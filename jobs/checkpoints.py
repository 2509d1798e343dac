"""The control plane's checkpoint store: copies of each job's checkpoints pulled off its
instances, one folder each, under `SAEFLEET_HOME/artifacts/<sweep>/<job>/checkpoints/`.

Verification is the trainer's own (a checksum manifest written with each checkpoint); it reads
files only, so the control plane stays free of torch.
"""

from __future__ import annotations

from pathlib import Path

from queue_app.settings import Settings
from sae.checkpoint import latest_valid_checkpoint, prune_checkpoints, verify_checkpoint


def newest_pulled_checkpoint(settings: Settings, sweep_id: str, job_id: str) -> Path | None:
    """The newest pulled checkpoint of a job that verifies (a corrupt newest one falls back to
    the one before it), or None when there is none."""
    directory = settings.checkpoints_dir(sweep_id, job_id)
    return latest_valid_checkpoint(directory) if directory.exists() else None


def verify_pulled_checkpoint(path: Path) -> bool:
    return path.is_dir() and verify_checkpoint(path)


def prune_pulled_checkpoints(settings: Settings, sweep_id: str, job_id: str, keep: int) -> None:
    """Keep the newest `keep` pulled checkpoints of a job (a long run pulls one per segment)."""
    directory = settings.checkpoints_dir(sweep_id, job_id)
    if directory.exists():
        prune_checkpoints(directory, keep)
