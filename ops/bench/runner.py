"""`saefleet bench queue`: plain Celery against saefleet's stage machinery, side by side on one
private Redis, and the submit of a 1,000-job sweep.

It starts its own redis-server (AOF on, as in production) in a temporary directory, runs the
publish phase (nothing consumes), starts one plain and one saefleet worker (2 processes each),
runs the latency phase, and stops every process it started, also on failure. The measurements
themselves run in `ops.bench.measure`, in a process whose environment names that Redis.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ops.views import terminal
from queue_app.celery_commands import worker_argv
from queue_app.processes import free_port, redis_server_binary, spawn_detached, stop_process
from queue_app.redis_server import start_redis

STAGE_RATIO_TARGET = 1.2
SUBMIT_TARGET_S = 5.0
WORKER_PROCESSES = 2
MEASURE_TIMEOUT_S = 900.0


def run_benchmark(rounds: int = 4) -> dict[str, Any]:
    """Measure everything once; returns the report (see `report`)."""
    with tempfile.TemporaryDirectory(prefix="saefleet-queue-bench-") as tmp:
        workdir = Path(tmp)
        with private_redis(workdir / "redis") as url:
            env = _env(workdir, url)
            published = _measure("publish", workdir, rounds, env)
            with workers(workdir, env):
                latencies = _measure("latency", workdir, rounds, env)
    return report(published, latencies)


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    password = secrets.token_urlsafe(16)
    port = free_port()
    pid = start_redis(data_dir, port, password, data_dir / "redis.log")
    try:
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        stop_process(pid)


@contextmanager
def workers(workdir: Path, env: dict[str, str]) -> Iterator[None]:
    """The plain worker and the saefleet worker, same options, both stopped on the way out."""
    from ops.bench.tasks import PLAIN_QUEUE
    from queue_app.celery_app import CONTROL_QUEUE

    pids: list[int] = []
    try:
        for name, target, queue in (
            ("plain", "ops.bench.tasks:plain_app", PLAIN_QUEUE),
            ("saefleet", "ops.bench.tasks:app", CONTROL_QUEUE),
        ):
            argv = worker_argv(
                [queue],
                node=f"bench-{name}@bench",
                concurrency=WORKER_PROCESSES,
                log_level="WARNING",
                app=target,
                events=False,
                heartbeat=False,
            )
            pids.append(spawn_detached(argv, workdir / f"worker-{name}.log", env=env))
        yield
    finally:
        for pid in pids:
            stop_process(pid, timeout_s=10)


def _env(workdir: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "SAEFLEET_REDIS_URL": url,
        "SAEFLEET_HOME": str(workdir / "home"),
        "SAEFLEET_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def _measure(phase: str, workdir: Path, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ops.bench.measure", phase, str(workdir), str(rounds)]
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        logs = ", ".join(str(p) for p in sorted(workdir.glob("*.log")))
        raise RuntimeError(
            f"benchmark phase {phase} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            f"\n(worker logs: {logs})"
        )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---- the report --------------------------------------------------------------------------------


def report(published: dict[str, Any], latencies: dict[str, Any]) -> dict[str, Any]:
    """Rows of plain vs ours (medians), ratios ours/plain (>1: we are slower), the targets."""
    chain, chord = latencies["chain"], latencies["chord"]
    enqueue, submit = published["enqueue"], published["submit"]
    length = chain["length"]
    rows = [
        _row(
            "chain of 8 no-ops",
            "ms",
            chain["plain_s"]["median"] * 1e3,
            chain["ours_s"]["median"] * 1e3,
        ),
        _row(
            "per stage in that chain",
            "ms",
            chain["plain_s"]["median"] * 1e3 / length,
            chain["ours_s"]["median"] * 1e3 / length,
        ),
        _row(
            f"chord of {chord['headers']} no-op headers + body",
            "ms",
            chord["plain_s"]["median"] * 1e3,
            chord["ours_s"]["median"] * 1e3,
        ),
        _row(
            f"enqueue {enqueue['tasks']:,} tasks",
            "tasks/s",
            enqueue["plain_per_s"]["median"],
            enqueue["ours_per_s"]["median"],
            per_s=True,
        ),
    ]
    stage_ratio = rows[1]["ratio"]
    submit_s = submit["cli_s"]["median"]
    return {
        "machine": machine(),
        "rows": rows,
        "submit": {
            "jobs": submit["jobs"],
            "cli_s": submit_s,
            "in_process_s": submit["in_process_s"]["median"],
            "phases_s": submit["phases_s"],
        },
        "targets": {
            "stage_ratio": {
                "value": stage_ratio,
                "target": STAGE_RATIO_TARGET,
                "met": stage_ratio <= STAGE_RATIO_TARGET,
            },
            "submit_1000_s": {
                "value": submit_s,
                "target": SUBMIT_TARGET_S,
                "met": submit_s < SUBMIT_TARGET_S,
            },
        },
        "raw": {"publish": published, "latency": latencies},
    }


def _row(what: str, unit: str, plain: float, ours: float, per_s: bool = False) -> dict[str, Any]:
    ratio = plain / ours if per_s else ours / plain
    return {"what": what, "unit": unit, "plain": plain, "ours": ours, "ratio": ratio}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    redis_version = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "redis": next((w.removeprefix("v=") for w in redis_version if w.startswith("v=")), "?"),
    }


def render(result: dict[str, Any]) -> Table:
    m = result["machine"]
    table = Table(
        title=f"queue benchmark, {m['date']}: {m['cpu']}, {m['cores']} cores, "
        f"Celery {m['celery']}, Redis {m['redis']}",
        caption="ratio = ours / plain Celery in time (above 1: saefleet is slower)",
    )
    for column in ("shape", "unit", "plain Celery", "saefleet", "ratio"):
        table.add_column(column, justify="left" if column == "shape" else "right")
    for row in result["rows"]:
        fmt = ",.0f" if row["unit"] == "tasks/s" else ".1f"
        table.add_row(
            row["what"],
            row["unit"],
            format(row["plain"], fmt),
            format(row["ours"], fmt),
            f"{row['ratio']:.2f}x",
        )
    submit = result["submit"]
    phases = ", ".join(f"{k} {v:.2f}" for k, v in submit["phases_s"].items())
    table.add_row(
        f"sweep submit of {submit['jobs']:,} jobs (CLI)", "s", "", f"{submit['cli_s']:.2f}", ""
    )
    table.add_row("  in process: " + phases, "s", "", f"{submit['in_process_s']:.2f}", "")
    return table


def verdicts(result: dict[str, Any]) -> list[str]:
    t = result["targets"]
    stage, submit = t["stage_ratio"], t["submit_1000_s"]
    return [
        f"per-stage overhead {stage['value']:.2f}x plain Celery (target <= {stage['target']}x): "
        + ("met" if stage["met"] else "MISSED"),
        f"submit of 1,000 jobs {submit['value']:.2f} s (target < {submit['target']:.0f} s): "
        + ("met" if submit["met"] else "MISSED"),
    ]


def bench_queue_command(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of every measurement.")] = 4,
) -> None:
    """Plain Celery vs saefleet's stage machinery on a private Redis; submit of 1,000 jobs."""
    result = run_benchmark(rounds)
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console = terminal()
    console.print(render(result))
    for line in verdicts(result):
        console.print(line)
