"""End-to-end fixtures: a real control plane for one test (Celery control worker, tunnel service
and optionally beat as subprocesses against the test Redis, an isolated SAEFLEET_HOME), the tiny
LM and corpus the jobs train on, and sweep files built from them.

Everything started here is stopped at teardown, local instances (detached sshd processes)
included, even when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from jobs.providers.local import LocalProvider
from jobs.tiny_sweep import tiny_sweep
from queue_app.celery_app import CONTROL_WORKER_QUEUES
from queue_app.celery_commands import beat_argv, celery_argv, worker_argv
from queue_app.connection import connect
from queue_app.processes import stop_process
from queue_app.records import SweepRecord
from queue_app.settings import Settings
from queue_app.store import Store

REPO = Path(__file__).resolve().parents[2]


def write_sweep(
    directory: Path,
    assets: dict[str, Path],
    grid: dict[str, list[Any]] | None = None,
    name: str = "e2e",
    provider: dict[str, Any] | None = None,
    **job_overrides: Any,
) -> Path:
    """The tiny sweep on the test assets, as a sweep file."""
    spec = tiny_sweep(
        assets["model"], assets["corpus"], name=name, provider=provider, grid=grid, **job_overrides
    )
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_assets(directory: Path) -> dict[str, Path]:
    """The tiny LM and a synthetic PII chat corpus, made by the SAE package's own CLI."""
    model, corpus = directory / "tiny-lm", directory / "corpus.jsonl"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "sae", "make-tiny-lm", str(model)], check=True)
    if not corpus.exists():
        subprocess.run(
            [sys.executable, "-m", "sae", "make-corpus", str(corpus), "--n", "400", "--seed", "0"],
            check=True,
        )
    return {"model": model, "corpus": corpus}


class ControlPlane:
    """Control-plane services of one test, as real subprocesses."""

    def __init__(self, home: Path, redis_url: str, poll_interval_s: float = 0.3) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "SAEFLEET_HOME": str(home),
            "SAEFLEET_REDIS_URL": redis_url,
            "SAEFLEET_POLL_INTERVAL_S": str(poll_interval_s),
            "PYTHONUNBUFFERED": "1",
        }
        self.settings = Settings(home=home, redis_url=redis_url)  # type: ignore[arg-type]
        self.store: Store = connect(redis_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- services -------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "SAEFLEET_SERVICE_NAME": name, **(env or {})},
                cwd=REPO,
                start_new_session=True,
            )

    def start_control(self, concurrency: int = 3, app: str = "queue_app.celery_app") -> None:
        """The control worker; `app` names the module with the Celery app it runs (a test may
        wrap the real one, e.g. to inject provider faults)."""
        argv = worker_argv(
            CONTROL_WORKER_QUEUES,
            node=f"control-{os.getpid()}@%h",
            concurrency=concurrency,
            log_level="INFO",
            app=app,
            events=False,
        )
        self._spawn("control", argv)
        self.wait_for_worker("control-")

    def start_tunnels(self) -> None:
        self._spawn("tunnels", [sys.executable, "-m", "jobs.tunnels"])

    def start_beat(self, interval_s: float = 2.0, name: str = "beat") -> None:
        """Celery beat sending watchdog ticks; another `name` starts one more beat beside it."""
        schedule = str(self.home / f"celery{name}-schedule")
        self._spawn(
            name,
            beat_argv(schedule, "INFO"),
            env={"SAEFLEET_WATCHDOG_INTERVAL_S": str(interval_s)},
        )

    def stop(self, name: str, kill: bool = False) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if kill:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        stop_process(proc.pid, timeout_s=20)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def wait_for_worker(self, prefix: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.cli("inspect-ping", check=False)
            if prefix in out:
                return
            time.sleep(0.5)
        raise TimeoutError(f"no worker named {prefix}* answered; see {self.home / 'logs'}")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the saefleet CLI (or `inspect-ping`) with the test's environment."""
        if args and args[0] == "inspect-ping":
            argv = celery_argv("inspect", "ping")
        else:
            argv = [sys.executable, "-m", "ops.cli", *args]
        return subprocess.run(
            argv, env=self.env, cwd=REPO, capture_output=True, text=True, check=False
        )

    def cli(self, *args: str, check: bool = True) -> str:
        """The CLI's output (stdout; stdout + stderr when it failed)."""
        proc = self.run(*args)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    # ---- sweeps ---------------------------------------------------------------------------------

    def submit(self, sweep_file: Path) -> str:
        out = self.cli("sweep", "submit", str(sweep_file), "--json")
        return str(json.loads(out)["sweep_id"])

    def wait_sweep(self, sweep_id: str, timeout_s: float = 240.0) -> SweepRecord:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sweep = self.store.sweep(sweep_id)
            if sweep.finished_at:
                return sweep
            time.sleep(0.5)
        states = {j.job_id: f"{j.state} ({j.reason})" for j in self.store.sweep_jobs(sweep_id)}
        raise TimeoutError(f"sweep {sweep_id} not finished after {timeout_s}s: {states}")

    def local_provider(self) -> LocalProvider:
        return LocalProvider(self.settings.local_instances_dir)

    def running_instances(self) -> list[str]:
        """Local instances the provider still runs (what a crash could leave billing)."""
        return [i.id for i in self.local_provider().list(include_foreign=True) if not i.status.gone]

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        if self.settings.local_instances_dir.exists():
            provider = self.local_provider()
            for instance in provider.list(include_foreign=True):
                with suppress(Exception):
                    provider.terminate(instance.id)
        self.store.r.close()


@contextmanager
def control_plane(home: Path, redis_url: str, **kwargs: Any) -> Iterator[ControlPlane]:
    plane = ControlPlane(home, redis_url, **kwargs)
    try:
        yield plane
    finally:
        plane.close()
