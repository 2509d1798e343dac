"""The GPU side of a pack job (`JobRecord.members`): one `PackRun` trains every member still in
the pack from one activation stream, member `m` in `run/<m>/`. Only the GPU-side worker loads
this module (through jobs.training_task).

A segment ends, as a single job's does, on its time limit, when asked to stop, or when every
member is done; and also as soon as a member leaves the pack on the control plane (cancelled,
capped) or is asked to stop (its own cost cap): the next segment trains the rest. Each
member's outcome (its checkpoint relative to `run/`, done, its own error) goes into the attempt
record's `member_outcomes` for `supervise_training` to settle (jobs.pack_stages).

Test hooks: `$SAEFLEET_WORKDIR/faults.json`, read when a run is built (a single job's too):
- `{"nan_at": {"<member job id>": <step>}}` makes that member's loss NaN once it has taken
  that many steps (sae.pack's `nan_at`);
- `{"oom_at": {"step": <n>, "above_micro_batch": <tokens>}}` raises torch.OutOfMemoryError at
  step n while the micro-batch is above that many tokens (omitted: once; sae.oom's
  `InjectedOOM`), on every attempt whose instance has the file; with `"above_lm_batch":
  <contexts>` instead, in the LM forward while it takes more contexts than that; with
  `"above_members": <m>`, only in a pack of more than m members.

Every run is built with the halvings (micro-batch, LM forward batch) the job has kept
(jobs.oom), and reports each new one back at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.checkpoint_restore import restore_checkpoint
from jobs.oom import record_halving
from jobs.remote import RemoteLayout
from queue_app.pack_mirror import following_members
from queue_app.records import JobRecord
from queue_app.store import Store

if TYPE_CHECKING:
    from sae.config import RunConfig
    from sae.oom import InjectedOOM
    from sae.pack import PackResult, PackRun

FAULTS_FILE = "faults.json"
MEMBER_CHECK_INTERVAL_S = 2.0
_packs: dict[tuple[str, int, tuple[str, ...]], PackRun] = {}


def pack_run(store: Store, job_id: str, attempt: int, members: list[str], workdir: Path) -> PackRun:
    """The pack's run for these members (kept between segments while they stay the same)."""
    from sae.pack import PackRun

    key = (job_id, attempt, tuple(members))
    if key not in _packs:
        _packs.clear()  # one pack per instance: a new member set restores from its checkpoints
        layout = RemoteLayout(str(workdir))
        for member in members:  # a resumed attempt's checkpoints, downloaded from the store
            restore_checkpoint(
                Path(layout.member_restore_plan(member)),
                Path(layout.member_checkpoints_dir(member)),
            )
        pack = store.job(job_id)
        configs = [
            with_halvings(record.job_spec.config.run_config(), pack)
            for record in store.jobs(members)
        ]
        nan_at = _faults(workdir).get("nan_at", {})
        _packs[key] = PackRun(
            configs,
            [workdir / "run" / member for member in members],
            nan_at={members.index(m): step for m, step in nan_at.items() if m in members},
            inject_oom=injected_oom(workdir),
        )
    return _packs[key]


def with_halvings(config: RunConfig, job: JobRecord) -> RunConfig:
    """`config` with the halvings of the micro-batch and of the LM forward's batch that `job`
    has kept (jobs.oom)."""
    from sae.oom import with_lm_batch_halved, with_micro_batch_halved

    if job.micro_batch_halvings:
        config = with_micro_batch_halved(config, job.micro_batch_halvings)
    if job.lm_batch_halvings:
        config = with_lm_batch_halved(config, job.lm_batch_halvings)
    return config


def _faults(workdir: Path) -> dict[str, Any]:
    path = workdir / FAULTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def injected_oom(workdir: Path) -> InjectedOOM | None:
    """The out-of-memory fault this instance's faults.json asks for, if any."""
    from sae.oom import InjectedOOM

    fault = _faults(workdir).get("oom_at")
    if fault is None:
        return None
    return InjectedOOM(
        at_step=fault["step"],
        above_micro_batch=fault.get("above_micro_batch"),
        above_lm_batch=fault.get("above_lm_batch"),
        above_members=fault.get("above_members"),
    )


class MemberWatch:
    """Stops the segment once one of `members` leaves the pack or is asked to stop (its own
    cost cap: the member leaves at the segment's end)."""

    def __init__(self, store: Store, job_id: str, attempt: int, members: list[str]) -> None:
        self.store, self.job_id, self.attempt, self.members = store, job_id, attempt, members
        self._checked = time.monotonic()

    def changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < MEMBER_CHECK_INTERVAL_S:
            return False
        self._checked = now
        return any(
            m.terminal or m.attempt != self.attempt or m.stop_requested
            for m in self.store.jobs(self.members)
        )


def train_pack_segment(
    store: Store,
    job_id: str,
    attempt: int,
    workdir: Path,
    max_seconds: float,
    should_stop: Callable[[], bool],
    on_progress: Callable[[dict[str, Any]], None],
    on_member_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one segment of the pack; returns the segment's outcome fields. `on_member_progress`
    hears each member's progress (its W&B run, jobs.tracking)."""
    members = following_members(store, job_id, attempt)
    if not members:
        return {"segment_done": True, "member_outcomes": {}}
    run = pack_run(store, job_id, attempt, members, workdir)
    watch = MemberWatch(store, job_id, attempt, members)

    def report(snapshot: dict[str, Any]) -> None:
        on_progress({k: v for k, v in snapshot.items() if k != "members"})
        for member, progress in zip(members, snapshot["members"], strict=True):
            store.update_job(member, attempt, progress={**progress, "updated_at": time.time()})
            if on_member_progress is not None:
                on_member_progress(member, progress)

    result = run.train(
        max_seconds=max_seconds,
        should_stop=lambda: should_stop() or watch.changed(),
        on_progress=report,
        heartbeat_path=workdir / "run" / "heartbeat.json",
        on_oom=lambda restart: record_halving(store, job_id, attempt, restart),
    )
    return {
        "segment_done": not any(m.active for m in run.members),
        "segment_stopped": result.members[0].stopped,
        "member_outcomes": _outcomes(members, result, workdir),
    }


def _outcomes(members: list[str], result: PackResult, workdir: Path) -> dict[str, dict[str, Any]]:
    run_dir = (workdir / "run").resolve()
    out = {}
    for member, segment in zip(members, result.members, strict=True):
        checkpoint = ""
        if segment.checkpoint:
            checkpoint = Path(segment.checkpoint).resolve().relative_to(run_dir).as_posix()
        out[member] = {
            "checkpoint": checkpoint,
            "done": segment.done,
            "step": segment.step,
            "error": segment.error,
        }
    return out
