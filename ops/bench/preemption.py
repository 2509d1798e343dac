"""`saefleet bench preemption`: what a spot preemption costs on the local provider, with and
without an interruption notice, for boot_delay_s 0 and 30.

It runs a fresh control plane (its own Redis on a free port, control worker, beat, tunnels) in
a temporary SAEFLEET_HOME and stops it at the end. Per boot delay, one sweep of two identical
jobs; once both train, one gets a notice of NOTICE_S (its instance dies NOTICE_S later, unless
saefleet terminated it first) and the other is killed at once. Measured per job:

- steps lost: the newest step attempt 1 reached (its heartbeat, written at most 2 s apart, so a
  lower bound without notice; exact with notice: the segment's last checkpoint) minus the step
  attempt 2 resumed from;
- seconds from the instance's death (the kill, or the moment the notice named) to attempt 2's
  launch and to its first progress report: negative means before the death;
- where attempt 2's seconds went, on the same clock (`phases`): its instance ready (VERIFYING),
  bootstrap begun, the job TRAINING (worker answering, checkpoint placed), its first segment
  started on the worker (after the worker loaded the trainer), its first progress report.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ops import controlplane
from ops.views import terminal
from queue_app.errors import NotFoundError
from queue_app.processes import free_port

NOTICE_S = 30.0
BOOT_DELAYS_S = (0.0, 30.0)
RUN: dict[str, Any] = {"train.total_tokens": 196_608, "segment_minutes": 1.0}
"""384 steps of the tiny run in 1-minute segments (sae/ tiny sweep: 512 tokens a step)."""
TARGET_AFTER_DEATH_S = 10.0
TIMEOUT_S = 900.0
FAST_SERVICES = {
    "SAEFLEET_POLL_INTERVAL_S": "0.3",
    "SAEFLEET_NOTICE_POLL_S": "0.5",
    "SAEFLEET_WATCHDOG_INTERVAL_S": "1",
    "SAEFLEET_WATCHDOG_LIVENESS_MISSES": "2",
    "SAEFLEET_WATCHDOG_SSH_TIMEOUT_S": "3",
}


def run_benchmark() -> dict[str, Any]:
    """Measure every case once (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="saefleet-preemption-bench-") as tmp:
        env = {
            **FAST_SERVICES,
            "SAEFLEET_HOME": tmp,
            "SAEFLEET_REDIS_PORT": str(free_port()),
        }
        os.environ.update(env)
        os.environ.pop("SAEFLEET_REDIS_URL", None)
        from queue_app.settings import Settings

        settings = Settings()
        try:
            controlplane.up(settings)
            rows = _measure(settings)
        finally:
            _stop_everything(settings)
    return {"notice_s": NOTICE_S, "target_after_death_s": TARGET_AFTER_DEATH_S, "rows": rows}


def _measure(settings: Any) -> list[dict[str, Any]]:
    """Both boot delays at once: submit, preempt each job once it trains, measure."""
    from queue_app.connection import get_store

    store = get_store(settings)
    sweeps = {delay: _submit(settings, store, delay) for delay in BOOT_DELAYS_S}
    provider = _local_provider(settings)
    cases = []
    for delay, (noticed, killed) in sweeps.items():
        cases += [(delay, noticed, True), (delay, killed, False)]
    instances, deaths, steps = _preempt_each_once_training(store, provider, cases)
    trained_again, segment_started = _wait_attempt_2_progress(
        store, [job_id for _, job_id, _ in cases]
    )
    rows = [
        {
            "boot_delay_s": delay,
            "notice": notice,
            "steps_lost": _steps_lost(settings, store, job_id, instances[job_id], steps[job_id]),
            "after_death_s": round(trained_again[job_id] - deaths[job_id], 2),
            "launched_after_death_s": round(_launched_at(store, job_id) - deaths[job_id], 2),
            "phases": _phases(store, job_id, segment_started[job_id], deaths[job_id]),
        }
        for delay, job_id, notice in cases
    ]
    for delay in BOOT_DELAYS_S:
        sweep_id = store.job(sweeps[delay][0]).sweep_id
        _wait(f"sweep {sweep_id} finalized", lambda s=sweep_id: store.sweep(s).summary_path, 0.5)
    return rows


def _submit(settings: Any, store: Any, boot_delay_s: float) -> tuple[str, str]:
    """A sweep of two identical jobs with this boot delay; their ids."""
    import yaml

    from jobs.spec import load_sweep_file
    from jobs.submission import submit_sweep
    from jobs.tiny_sweep import tiny_sweep
    from ops.demo import prepare_assets

    demo = prepare_assets(settings, 1).parent  # the tiny LM and corpus, made once
    spec_dict = tiny_sweep(
        demo / "tiny-lm",
        demo / "corpus.jsonl",
        name=f"bench-boot-{boot_delay_s:g}",
        provider={"name": "local", "boot_delay_s": boot_delay_s},
        grid={"train.seed": [0, 1]},
        **RUN,
    )
    path = settings.home / f"bench-{boot_delay_s:g}.yaml"
    path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = load_sweep_file(path)
    noticed, killed = submit_sweep(spec, spec.expand(), store).job_ids
    return noticed, killed


def _local_provider(settings: Any) -> Any:
    from jobs.providers.local import LocalProvider

    return LocalProvider(settings.local_instances_dir)


def _wait(what: str, probe: Any, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"benchmark: no {what} within {TIMEOUT_S:.0f}s")


def _preempt_each_once_training(
    store: Any, provider: Any, cases: list[tuple[float, str, bool]]
) -> tuple[dict[str, str], dict[str, float], dict[str, int]]:
    """Preempt each job's attempt 1 as soon as its training loop reported a step (with notice
    or not, as its case says); returns the instance ids, the moments they die and the steps
    they had reported then."""
    notices = {job_id: notice for _, job_id, notice in cases}
    instances: dict[str, str] = {}
    deaths: dict[str, float] = {}
    steps: dict[str, int] = {}

    def all_preempted() -> bool:
        for job_id in set(notices) - set(instances):
            job = store.job(job_id)
            if job.state != "TRAINING" or int(job.progress.get("step", 0)) < 1:
                continue
            record = store.attempt(job_id, 1)
            notice_s = NOTICE_S if notices[job_id] else 0.0
            steps[job_id] = int(job.progress["step"])
            instances[job_id], deaths[job_id] = str(record.instance_id), time.time() + notice_s
            provider.preempt(instances[job_id], notice_s=notice_s)
        return len(instances) == len(notices)

    _wait("every job training", all_preempted)
    return instances, deaths, steps


def _wait_attempt_2_progress(
    store: Any, job_ids: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """When each job's attempt 2 first reported progress (its trainer's loop started from the
    checkpoint), and when its first segment started; the job's progress holds attempt 1's
    reports until then, and later reports replace the first, so every job is watched at once."""
    first: dict[str, float] = {}
    segment_started: dict[str, float] = {}

    def all_training() -> bool:
        for job_id in set(job_ids) - set(first):
            job = store.job(job_id)
            if job.attempt != 2:
                continue
            try:
                started = store.attempt(job_id, 2).segment_started_at
            except NotFoundError:  # begun a moment ago: its record comes right after
                continue
            at = float(job.progress.get("updated_at", 0))
            if started is not None and at > started:
                first[job_id], segment_started[job_id] = at, started
        return len(first) == len(job_ids)

    _wait("every attempt 2 training", all_training, every_s=0.02)
    return first, segment_started


def _phases(store: Any, job_id: str, segment_started: float, death: float) -> dict[str, float]:
    """Attempt 2's milestones in seconds after the death (see the module docstring)."""
    entered: dict[str, float] = {}
    for event in store.events(job_id):
        if int(event.get("attempt", 0)) == 2:
            entered.setdefault(event["to"], float(event["ts"]))
    moments = {
        "ready": entered.get("VERIFYING"),
        "bootstrap": entered.get("BOOTSTRAPPING"),
        "training_state": entered.get("TRAINING"),
        "segment_started": segment_started,
    }
    return {name: round(at - death, 2) for name, at in moments.items() if at is not None}


def _launched_at(store: Any, job_id: str) -> float:
    """When attempt 2's instance was launched."""
    return float(store.instance(store.attempt(job_id, 2).instance_id).launched_at)


def _steps_lost(settings: Any, store: Any, job_id: str, instance_id: str, reported: int) -> int:
    """The newest step attempt 1 reached (reported, its heartbeat, its last checkpoint) minus
    the step attempt 2 resumed from."""
    first, second = store.attempt(job_id, 1), store.attempt(job_id, 2)
    resumed = int((second.resume_from or "step-0").removeprefix("step-"))
    reached = [resumed, reported]
    if first.segment_status == "done" and first.segment_checkpoint:
        reached.append(int(Path(first.segment_checkpoint).name.removeprefix("step-")))
    beat = settings.local_instances_dir / instance_id / "home" / "run" / "heartbeat.json"
    if beat.exists():
        reached.append(int(json.loads(beat.read_text()).get("step", 0)))
    return max(reached) - resumed


def _stop_everything(settings: Any) -> None:
    """The control plane first (a provision in flight could launch after the instances were
    listed), then every local instance."""
    controlplane.down(settings)
    provider = _local_provider(settings)
    if settings.local_instances_dir.exists():
        for instance in provider.list(include_foreign=True):
            provider.terminate(instance.id)


def render(result: dict[str, Any]) -> Table:
    table = Table(title=f"preemption on the local provider (notice: {result['notice_s']:g} s)")
    columns = ("boot_delay_s", "notice", "steps lost", "replacement launched")
    milestones = ("ready", "bootstrap", "training_state", "segment_started")
    for column in (*columns, *milestones, "training again"):
        table.add_column(column.replace("_", " "), justify="right")
    for row in result["rows"]:
        phases = row.get("phases", {})
        table.add_row(
            f"{row['boot_delay_s']:g}",
            "yes" if row["notice"] else "no",
            str(row["steps_lost"]),
            f"{row['launched_after_death_s']:+.1f} s",
            *(f"{phases[m]:+.1f} s" if m in phases else "-" for m in milestones),
            f"{row['after_death_s']:+.1f} s",
        )
    table.caption = "seconds after the old instance's death (negative: before it)"
    return table


def verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's targets, met or not: no step lost with notice, and with a notice at least as
    long as the boot delay, training again within TARGET_AFTER_DEATH_S of the death."""
    noticed = [row for row in result["rows"] if row["notice"]]
    lost = max((row["steps_lost"] for row in noticed), default=0)
    covered = [row for row in noticed if result["notice_s"] >= row["boot_delay_s"]]
    late = max((row["after_death_s"] for row in covered), default=float("-inf"))
    target = result["target_after_death_s"]
    return [
        f"steps lost with notice: {lost} (target 0: {'met' if lost == 0 else 'NOT met'})",
        f"with notice >= boot delay, training again at most {late:+.1f} s after the death "
        f"(target <= {target:g} s: {'met' if late <= target else 'NOT met'})",
    ]


def bench_preemption_command(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    output: Annotated[Path, typer.Option(help="Where the JSON report goes.")] = Path(
        "bench-preemption.json"
    ),
) -> None:
    """Steps lost and seconds to training again after a preemption, with and without notice."""
    result = run_benchmark()
    output.write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console = terminal()
    console.print(render(result))
    for line in verdicts(result):
        console.print(line)
