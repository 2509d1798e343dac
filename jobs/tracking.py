"""Experiment tracking from the GPU side: one Weights & Biases run per job, grouped by sweep.

Each segment opens the job's run by a fixed id (`wandb_run_id`) with `resume="allow"`, so later
segments and resumed attempts continue the same run; the trainer's progress (loss, FVU, L0, dead
fraction, tokens/s, learning rate) goes to it as `train/*` at the trainer's step, the final evals
into its summary as `eval/*`. A pack's members are tracked the same way, each its own run, open
side by side in the pack's worker (`PackTracker`). wandb reads its key from `WANDB_API_KEY`,
which bootstrap puts in the worker's 0600 secrets file like the HF token; nothing here logs it,
and the run's config is the job's config, which holds no secret. A wandb failure never fails
training: it is logged (redacted) and tracking stops for that segment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queue_app.jobspec import JobConfig, TrackingSpec
from queue_app.logs import redact
from queue_app.records import JobRecord

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("loss", "fvu", "l0", "dead_fraction", "tokens_per_s", "lr", "tokens")
"""What the trainer's progress reports and W&B receives as `train/<key>`."""
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def wandb_run_id(job_id: str) -> str:
    """The job's W&B run id: the same for every segment and attempt of the job."""
    return _RUN_ID_UNSAFE.sub("-", job_id)[:64]


class RunTracker:
    """One segment's handle on the job's W&B run."""

    def __init__(self, run: Any) -> None:
        self._run: Any | None = run

    @classmethod
    def open(
        cls, tracking: TrackingSpec, config: JobConfig, job: JobRecord, attempt: int, workdir: Path
    ) -> RunTracker | None:
        """Open (or resume) the job's run; None when wandb cannot (the reason is logged)."""
        try:
            import wandb

            run = wandb.init(
                project=tracking.wandb_project,
                entity=tracking.wandb_entity,
                id=wandb_run_id(job.job_id),
                resume="allow",
                reinit="create_new",  # a pack's members: several runs open side by side
                group=job.sweep_id,
                name=job.name,
                job_type="sae-train",
                dir=str(workdir),
                config={**config.model_dump(mode="json", exclude={"tracking"}), "attempt": attempt},
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:  # tracking must never stop training
            log.warning("W&B tracking is off for this segment: %s", redact(str(exc))[:500])
            return None
        return cls(run)

    def log_progress(self, progress: dict[str, Any]) -> None:
        """Send the trainer's progress numbers (those it has) at its step."""
        metrics = {f"train/{k}": progress[k] for k in PROGRESS_KEYS if progress.get(k) is not None}
        step = progress.get("step")
        if metrics and step:
            self._guarded("log", lambda run: run.log(metrics, step=int(step)))

    def finish(self, evals: dict[str, Any] | None = None) -> None:
        """Put the final evals (scalars) into the run's summary, then close it for this segment."""
        scalars = {f"eval/{k}": v for k, v in (evals or {}).items() if isinstance(v, int | float)}
        if scalars:
            self._guarded("summary", lambda run: run.summary.update(scalars))
        self._guarded("finish", lambda run: run.finish())
        self._run = None

    def _guarded(self, what: str, action: Callable[[Any], object]) -> None:
        """Run `action` on the run; a failure turns tracking off for the segment."""
        if self._run is None:
            return
        try:
            action(self._run)
        except Exception as exc:  # tracking must never stop training
            reason = redact(str(exc))[:500]
            log.warning("W&B %s failed; tracking is off for this segment: %s", what, reason)
            self._run = None


class PackTracker:
    """One segment's handles on the W&B runs of a pack's tracked members."""

    def __init__(self, runs: dict[str, RunTracker]) -> None:
        self._runs = runs

    @classmethod
    def open(cls, members: list[JobRecord], attempt: int, workdir: Path) -> PackTracker:
        """Open (or resume) the run of every member whose config asks for tracking."""
        runs = {}
        for member in members:
            config = member.job_spec.config
            if config.tracking is None:
                continue
            run = RunTracker.open(config.tracking, config, member, attempt, workdir)
            if run is not None:
                runs[member.job_id] = run
        return cls(runs)

    def log_progress(self, member_id: str, progress: dict[str, Any]) -> None:
        run = self._runs.get(member_id)
        if run is not None:
            run.log_progress(progress)

    def finish(self, evals: dict[str, dict[str, Any]] | None = None) -> None:
        """Close every member's run, with the final evals of those that finished."""
        for member_id, run in self._runs.items():
            run.finish((evals or {}).get(member_id))
