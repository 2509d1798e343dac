"""Tick benchmark: `python -m watchdog.bench --instances 100 500 2000 [--json]`.

For each fleet size N it starts from an empty private redis-server, records N training jobs
(sweeps of 100, with job and sweep caps so the cost path does its full work) each on its own
instance, and times full ticks with the provider and SSH replaced by in-process fakes that
sleep like the real thing (jobs.providers.fake, jobs.ssh_fake). The first tick connects to
every instance (cold); later ones reuse the kept sessions (warm), which is the steady state of a
running watchdog.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from jobs.providers import instance_name
from jobs.providers.fake import FakeProvider, ProviderLatency
from jobs.ssh import CommandResult
from jobs.ssh_fake import FakeSSH, SSHLatency
from jobs.tiny_sweep import tiny_job
from queue_app.connection import connect
from queue_app.jobspec import JobConfig
from queue_app.processes import free_port, stop_process
from queue_app.records import InstanceRecord, JobRecord, SweepRecord
from queue_app.redis_server import start_redis
from queue_app.settings import Settings
from queue_app.statemachine import InstanceState, JobState
from queue_app.store import Store
from watchdog.context import TickContext
from watchdog.probe import SSHProbe
from watchdog.tick import run_tick

SWEEP_SIZE = 100


@dataclass(frozen=True)
class Latency:
    """Seconds each kind of fake call takes."""

    list_s: float = 0.0
    get_s: float = 0.0
    terminate_s: float = 0.0
    ssh_connect_s: float = 0.0
    ssh_command_s: float = 0.0

    def provider(self) -> ProviderLatency:
        return ProviderLatency(self.list_s, self.get_s, self.terminate_s)

    def ssh(self) -> SSHLatency:
        return SSHLatency(self.ssh_connect_s, self.ssh_command_s)


DEFAULT_LATENCY = Latency(
    list_s=0.4,  # one paginated list call of a cloud API
    get_s=0.15,
    terminate_s=0.2,
    ssh_connect_s=0.15,  # TCP + key exchange + auth to a nearby region
    ssh_command_s=0.04,  # one command round trip on a kept session
)
_PATH = (
    JobState.PROVISIONING,
    JobState.BOOTING,
    JobState.VERIFYING,
    JobState.BOOTSTRAPPING,
    JobState.TRAINING,
)
_CONFIG = JobConfig.model_validate(
    tiny_job("tiny-lm", "corpus.jsonl", **{"train.total_tokens": 1_000_000, "max_cost_usd": 1000.0})
).model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class BenchRow:
    instances: int
    cold_tick_s: float
    warm_tick_s: float
    """Median of the warm ticks."""
    warm_ms_per_instance: float
    ssh_workers: int
    actions: int
    errors: int


def populate(store: Store, n: int, provider: FakeProvider) -> None:
    """N training jobs, each with a live instance and a running segment."""
    now = time.time()
    for first in range(0, n, SWEEP_SIZE):
        sweep_id = f"sw{first // SWEEP_SIZE:04d}"
        ids = [f"{sweep_id}-{i:04d}" for i in range(min(SWEEP_SIZE, n - first))]
        jobs = [
            JobRecord(
                job_id=job_id,
                sweep_id=sweep_id,
                index=i,
                name=job_id,
                state=JobState.QUEUED,
                attempt=1,
                spec={"config": _CONFIG, "provider": {"name": "local"}, "overrides": {}},
                created_at=now,
                updated_at=now,
            )
            for i, job_id in enumerate(ids)
        ]
        sweep = SweepRecord(
            sweep_id=sweep_id,
            name=sweep_id,
            created_at=now,
            spec={},
            job_ids=ids,
            budget_usd=1e6,
        )
        store.create_sweep(sweep, jobs)
        for job_id in ids:
            _launch(store, provider, job_id, sweep_id, now)


def _launch(store: Store, provider: FakeProvider, job_id: str, sweep_id: str, now: float) -> None:
    name = instance_name(job_id, 1)
    instance = provider.add(f"fake-{secrets.token_hex(6)}", name)
    store.start_first_attempt(job_id)
    store.register_instance(
        InstanceRecord(
            instance_id=instance.id,
            provider="local",
            name=name,
            job_id=job_id,
            sweep_id=sweep_id,
            attempt=1,
            state=InstanceState.LAUNCHED,
            launched_at=now - 600,
            price_per_hour=2.0,
            host="127.0.0.1",
            ssh_port=22,
            ssh_user="ubuntu",
            workdir=instance.workdir,
        )
    )
    store.update_attempt(
        job_id,
        1,
        instance_id=instance.id,
        segment=1,
        segment_status="running",
        segment_sent_at=now,
        segment_started_at=now,
    )
    for state in _PATH:
        store.transition(job_id, 1, state)
    store.update_job(job_id, 1, progress={"step": 10, "updated_at": now})


def _healthy_instance(command: str) -> CommandResult:
    """The liveness probe's answer from an instance that trains: a fresh heartbeat."""
    now = int(time.time())
    return CommandResult(0, f"now={now}\nheartbeat={now - 1}\nworker=up\ntrainer=up\n", "")


def bench_one(url: str, settings: Settings, n: int, latency: Latency, ticks: int) -> BenchRow:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    store = connect(url)
    provider = FakeProvider(latency=latency.provider())
    populate(store, n, provider)
    ssh = FakeSSH(latency.ssh())
    ssh.answer("echo now=", _healthy_instance)
    probe = SSHProbe(settings, connect_fn=ssh)
    durations, actions, errors = [], 0, 0
    try:
        for _ in range(ticks):
            ctx = TickContext(
                store=store,
                settings=settings,
                providers=lambda spec: provider,
                probe=probe,
                revoke=lambda task_id: None,
            )
            report = run_tick(ctx)
            durations.append(report.duration_s)
            actions += len(report.actions)
            errors += len(report.errors)
    finally:
        probe.close()
        store.r.close()
    warm = statistics.median(durations[1:])
    return BenchRow(
        instances=n,
        cold_tick_s=round(durations[0], 3),
        warm_tick_s=round(warm, 3),
        warm_ms_per_instance=round(1000 * warm / n, 3),
        ssh_workers=settings.watchdog_ssh_workers,
        actions=actions,
        errors=errors,
    )


def run_bench(sizes: list[int], latency: Latency, ticks: int, ssh_workers: int) -> list[BenchRow]:
    with tempfile.TemporaryDirectory(prefix="saefleet-bench-") as tmp:
        home = Path(tmp)
        port = free_port()
        password = secrets.token_urlsafe(16)
        pid = start_redis(home / "redis", port, password, home / "redis.log")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        settings = Settings(home=home, redis_url=url, watchdog_ssh_workers=ssh_workers)
        try:
            return [bench_one(url, settings, n, latency, ticks) for n in sizes]
        finally:
            stop_process(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watchdog.bench", description=__doc__)
    parser.add_argument("--instances", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--ticks", type=int, default=4, help="ticks per size (first is cold)")
    parser.add_argument("--ssh-workers", type=int, default=Settings().watchdog_ssh_workers)
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiply the fake latencies (0: only the tick's own Redis and Python work)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.ticks < 2 or min(args.instances) < 1 or args.latency_scale < 0:
        parser.error("--ticks must be at least 2, --instances positive, --latency-scale >= 0")
    latency = Latency(**{k: v * args.latency_scale for k, v in asdict(DEFAULT_LATENCY).items()})
    rows = run_bench(args.instances, latency, args.ticks, args.ssh_workers)
    if args.json:
        out = {"latency_s": asdict(latency), "rows": [asdict(r) for r in rows]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    table = Table(title=f"watchdog tick, fake provider and SSH (latency x{args.latency_scale:g})")
    for column in ("instances", "cold tick s", "warm tick s", "warm ms/instance", "ssh workers"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.instances),
            f"{row.cold_tick_s:.3f}",
            f"{row.warm_tick_s:.3f}",
            f"{row.warm_ms_per_instance:.3f}",
            str(row.ssh_workers),
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
