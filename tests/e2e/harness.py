"""The end-to-end harness: a real control plane for one test (Celery control worker, tunnel
service and optionally beat as subprocesses against the test Redis, an isolated SAEFLEET_HOME),
waits on the events a scenario expects, and what the watchdog needs to act within seconds.

Everything started here is stopped at teardown, local instances (detached sshd processes)
included, even when the test fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

from jobs.providers.local import LocalProvider
from queue_app.celery_app import CONTROL_WORKER_QUEUES, TRAIN_SEGMENT_TASK, WARM_UP_TASK
from queue_app.celery_commands import beat_argv, worker_argv
from queue_app.connection import connect
from queue_app.processes import stop_process
from queue_app.records import SweepRecord
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.support import REPO
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for

BEAT_INTERVAL_S = 1.0
# The watchdog acts on a lost instance within a few seconds (the control worker and beat read
# these; the defaults are tuned for real clouds).
FAST_WATCHDOG = {
    "SAEFLEET_WATCHDOG_LIVENESS_MISSES": "2",
    "SAEFLEET_WATCHDOG_SSH_TIMEOUT_S": "3",
    "SAEFLEET_WATCHDOG_ORPHAN_GRACE_S": "5",
}
# What the watchdog's own scenarios add: the tiny runs beat every 2 s and their final evals take
# about a second, so a heartbeat 20 s old means a dead trainer.
QUICK_VERDICTS = {
    "SAEFLEET_WATCHDOG_HEARTBEAT_MAX_AGE_S": "20",
    "SAEFLEET_WATCHDOG_STUCK_MINUTES": "1.5",
    "SAEFLEET_COST_CAP_GRACE_S": "20",
}

# A killed worker's unacknowledged messages (and the tick lock it may hold) come back in seconds
# rather than the minute tuned for real fleets, for scenarios that kill a control worker or Redis.
QUICK_REDELIVERY = {"SAEFLEET_VISIBILITY_TIMEOUT_S": "20", "SAEFLEET_WATCHDOG_LOCK_TTL_S": "10"}

# How the provider's account of a killed local instance reads, in whichever words the watchdog
# or the stage saw it: a kill stops sshd before the provider records "preempted", so a look in
# between sees "unhealthy"; await_ready words its own.
LOST = re.compile(
    r"(is|was) (preempted|unhealthy|terminated)( at local| while booting)"
    r"|(no longer exists at local|vanished while booting)"
)

# A run of 384 steps in 0.6-second segments: a checkpoint is pulled within about a second and
# training goes on for several more, so a fault can land mid-training after a pulled checkpoint
# on any machine that trains under ~250 steps/s (a 2-core CI machine trains ~40 a second per
# core; every step past the fault is CPU the suite pays for, in the resumed attempt too).
LONG_RUN: dict[str, Any] = {"train.total_tokens": 196_608, "segment_minutes": 0.01}


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
            # Two scenarios share the machine's cores (pytest-xdist): one torch thread each.
            "SAEFLEET_LOCAL_CPU_THREADS": "1",
        }
        self.settings = Settings(home=home, redis_url=redis_url)  # type: ignore[arg-type]
        self.store: Store = connect(redis_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- services -------------------------------------------------------------------------------

    def output(self, name: str) -> Path:
        """The file a service's stdout and stderr go to (appended to on a restart)."""
        return self.home / "logs" / f"{name}.out"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.output(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self.output(name), "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "SAEFLEET_SERVICE_NAME": name, **(env or {})},
                cwd=REPO,
                start_new_session=True,
            )

    def start_control(self, concurrency: int = 3, app: str = "queue_app.celery_app") -> None:
        """The control worker, once it consumes; `app` names the module with the Celery app it
        runs (a test may wrap the real one, e.g. to inject provider faults)."""
        node = f"control-{os.getpid()}"
        out = self.output("control")
        start = out.stat().st_size if out.exists() else 0
        argv = worker_argv(
            CONTROL_WORKER_QUEUES,
            node=f"{node}@%h",
            concurrency=concurrency,
            log_level="INFO",
            app=app,
            events=False,
        )
        self._spawn("control", argv)
        proc = self.procs["control"]

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the control worker exited {proc.returncode}; see {out}")
            with open(out, "rb") as f:
                f.seek(start)
                return re.search(rf"{node}@\S+ ready\.".encode(), f.read()) is not None

        wait_for(f"the control worker to be ready (see {out})", ready, 60)

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

    def run(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the saefleet CLI with the test's environment."""
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )

    # ---- sweeps ---------------------------------------------------------------------------------

    def submit(self, sweep_file: Path) -> str:
        """`saefleet sweep submit`; returns the new sweep's id."""
        proc = self.run("sweep", "submit", str(sweep_file), "--json")
        assert proc.returncode == 0, f"submit exited {proc.returncode}: {proc.stdout}{proc.stderr}"
        return str(json.loads(proc.stdout)["sweep_id"])

    def wait_sweep(self, sweep_id: str, timeout_s: float = 240.0) -> SweepRecord:
        """The sweep once its finalizer ran and nothing that could run it again is left (see
        wait_settled): its finalize_runs then counts every run there will be."""
        try:
            wait_for(f"sweep {sweep_id} to finalize", self._finished(sweep_id), timeout_s)
        except TimeoutError as exc:
            states = {j.job_id: f"{j.state} ({j.reason})" for j in self.store.sweep_jobs(sweep_id)}
            raise TimeoutError(f"{exc}: {states}") from None
        self.wait_settled(sweep_id)
        return self.store.sweep(sweep_id)

    def _finished(self, sweep_id: str) -> Callable[[], float | None]:
        return lambda: self.store.sweep(sweep_id).finished_at

    def wait_settled(self, sweep_id: str, timeout_s: float = 150.0) -> None:
        """Wait until no task message about the sweep is left in Redis: none queued, none held
        unacknowledged (a poll's countdown, or the message of a worker that was killed, which the
        broker delivers again after its visibility timeout). Whatever could still run a stage or
        the finalizer of the sweep a second time has run by then."""
        clear: list[bool] = []

        def settled() -> bool:
            # Twice in a row: a worker takes a message off its queue a moment before it records
            # it as unacknowledged, and one look may fall in between.
            clear.append(not any(sweep_id in m for m in control_messages(self.store.r)))
            return clear[-2:] == [True, True]

        wait_for(f"no message about sweep {sweep_id} left in Redis", settled, timeout_s, 0.2)

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


def start_plane(
    plane: ControlPlane,
    *,
    concurrency: int = 4,
    beat: bool = True,
    app: str | None = None,
    quick_verdicts: bool = False,
) -> None:
    """Control worker, tunnel service and (unless told) beat ticking every second, with the
    watchdog acting within seconds (and judging heartbeats, stuck runs and cost caps within
    seconds too with `quick_verdicts`)."""
    plane.env.update({**FAST_WATCHDOG, **(QUICK_VERDICTS if quick_verdicts else {})})
    plane.start_control(concurrency=concurrency, **({"app": app} if app else {}))
    plane.start_tunnels()
    if beat:
        plane.start_beat(interval_s=BEAT_INTERVAL_S)


def submit_one_job(
    plane: ControlPlane, directory: Path, assets: dict[str, Path], **spec: Any
) -> tuple[str, str]:
    """Submit a sweep of one job (write_sweep's options); returns (sweep id, job id)."""
    sweep_id = plane.submit(write_sweep(directory, assets, **spec))
    [job_id] = plane.store.sweep(sweep_id).job_ids
    return sweep_id, job_id


def wait_pulled_checkpoint(plane: ControlPlane, job_id: str, timeout_s: float = 240) -> str:
    """The job's first checkpoint pulled into the store, while it still trains."""
    probe = lambda: pulled_checkpoint_while_training(plane.store, job_id)  # noqa: E731
    return wait_for("a pulled checkpoint", probe, timeout_s)


def pulled_checkpoint_while_training(store: Store, job_id: str) -> str | None:
    """The job's pulled checkpoint once it has one and still trains; fails the test at once
    when the job got past training first (the run was too short for the test's fault)."""
    job = store.job(job_id)
    if job.state in (JobState.COLLECTING, JobState.TERMINATING) or job.terminal:
        raise AssertionError(f"job {job_id} finished training first ({job.state})")
    return job.latest_checkpoint if job.state is JobState.TRAINING else None


# ---- task messages in Redis ---------------------------------------------------------------------


def control_messages(client: redis.Redis) -> list[str]:
    """Every control-plane task message in Redis, queued or held unacknowledged, as its headers
    and decoded body. Training segments and warm-ups are left out: only the instance they were
    sent to runs them, and the queue of a preempted instance keeps its last one forever."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind in ("list", b"list"):
            values = client.lrange(key, 0, -1)
        elif kind in ("hash", b"hash") and key in ("unacked", b"unacked"):
            values = client.hvals(key)
        else:
            continue
        for value in values:
            message = _task_message(_text(value))
            if message and message[0] not in (TRAIN_SEGMENT_TASK, WARM_UP_TASK):
                found.append(message[1])
    return found


def queued_messages(client: redis.Redis, queue: str) -> list[str]:
    """The task messages waiting in `queue` (not yet delivered), as in control_messages."""
    messages = (_task_message(_text(v)) for v in client.lrange(queue, 0, -1))
    return [m[1] for m in messages if m]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _task_message(value: str) -> tuple[str, str] | None:
    """(task name, headers + decoded body) of a kombu message (queued as the message, held
    unacked as [message, exchange, routing key]); None for anything else."""
    try:
        data = json.loads(value)
    except ValueError:
        return None
    message = data[0] if isinstance(data, list) and data else data
    if not isinstance(message, dict) or not isinstance(message.get("headers"), dict):
        return None
    body = decoded_bodies(json.dumps(message))
    return str(message["headers"].get("task")), json.dumps(message["headers"]) + "".join(body)


def decoded_bodies(value: str) -> list[str]:
    """The base64 bodies of kombu messages found in `value` (task args and kwargs)."""
    out: list[str] = []
    start = value.find("{")
    if start < 0:
        return out
    try:
        data = json.loads(value[start:])
    except ValueError:
        return out
    for candidate in data if isinstance(data, list) else [data]:
        if isinstance(candidate, dict) and isinstance(candidate.get("body"), str):
            with suppress(ValueError):
                out.append(base64.b64decode(candidate["body"]).decode(errors="replace"))
    return out
