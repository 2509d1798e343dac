"""The embedded control plane under `SAEFLEET_HOME`: its own redis-server (AOF on, loopback,
password from a generated file) unless `SAEFLEET_REDIS_URL` points elsewhere, the Celery control
worker (queues `control` and `watchdog`), Celery beat (the watchdog's schedule) and the tunnel
service. `up` twice is harmless; stale pid files are detected by pid and command line."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from queue_app.celery_commands import BEAT_MARKER, WORKER_MARKER, beat_argv, worker_argv
from queue_app.processes import (
    ProcessError,
    port_open,
    read_pidfile,
    spawn_detached,
    stop_process,
    wait_gone,
    write_pidfile,
)
from queue_app.redis_server import start_redis, wait_until_ready
from queue_app.settings import Settings

WORKER_READY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Service:
    """A long-running process of the control plane."""

    name: str
    argv: list[str]
    marker: str  # text its command line contains (guards against reused pids)
    stop_timeout_s: float = 30.0


def celery_services(settings: Settings) -> list[Service]:
    from queue_app.celery_app import CONTROL_WORKER_QUEUES

    control = worker_argv(
        CONTROL_WORKER_QUEUES,
        node="control@%h",
        concurrency=settings.control_concurrency,
        log_level=settings.log_level,
        mingle=True,
    )
    beat = beat_argv(str(settings.run_dir / "celerybeat-schedule"), settings.log_level)
    return [
        Service("control", control, marker=WORKER_MARKER),
        Service("beat", beat, marker=BEAT_MARKER),
        Service("tunnels", [sys.executable, "-m", "jobs.tunnels"], marker="jobs.tunnels"),
    ]


def pidfile(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def service_env(settings: Settings, name: str) -> dict[str, str]:
    return {**os.environ, "SAEFLEET_HOME": str(settings.home), "SAEFLEET_SERVICE_NAME": name}


# ---- up -----------------------------------------------------------------------------------------


def up(settings: Settings) -> dict[str, str]:
    """Start whatever is not running; returns service -> what happened."""
    for directory in (settings.home, settings.logs_dir, settings.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    report = {"redis": ensure_redis(settings)}
    for service in celery_services(settings):
        pid = read_pidfile(pidfile(settings, service.name), service.marker)
        if pid is not None:
            report[service.name] = f"running (pid {pid})"
            continue
        pid = spawn_detached(
            service.argv,
            settings.logs_dir / f"{service.name}.out",
            env=service_env(settings, service.name),
            cwd=settings.home,
        )
        write_pidfile(pidfile(settings, service.name), pid)
        report[service.name] = f"started (pid {pid})"
    wait_for_control_worker(settings)
    return report


def ensure_redis(settings: Settings) -> str:
    if not settings.embedded_redis:
        wait_until_ready(settings.broker_url, timeout_s=10)
        return "external (SAEFLEET_REDIS_URL)"
    pid = read_pidfile(pidfile(settings, "redis"), "redis-server")
    if pid is not None:
        return f"running (pid {pid})"
    if port_open("127.0.0.1", settings.redis_port):
        raise ProcessError(
            f"port {settings.redis_port} is taken by another process; "
            "set SAEFLEET_REDIS_PORT to a free port for saefleet's Redis"
        )
    pid = start_redis(
        settings.redis_dir,
        settings.redis_port,
        settings.redis_password(),
        settings.logs_dir / "redis.log",
    )
    write_pidfile(pidfile(settings, "redis"), pid)
    return f"started (pid {pid}, AOF in {settings.redis_dir})"


def wait_for_control_worker(settings: Settings) -> None:
    """Block until a control worker answers a ping (so `up` returns a usable plane)."""
    from queue_app.celery_app import make_app

    app = make_app(settings)
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0) or []
            if any(name.startswith("control@") for reply in replies for name in reply):
                return
        raise ProcessError(
            f"the control worker did not answer within {WORKER_READY_TIMEOUT_S:.0f}s; "
            f"see {settings.logs_dir / 'control.out'}"
        )
    finally:
        app.close()


# ---- down / status ------------------------------------------------------------------------------


def down(settings: Settings) -> dict[str, str]:
    """Stop every service (workers warm-shut-down first, Redis last); returns what happened."""
    report = {}
    for service in reversed(celery_services(settings)):
        report[service.name] = stop_service(
            settings, service.name, service.marker, service.stop_timeout_s
        )
    if settings.embedded_redis:
        report["redis"] = stop_service(settings, "redis", "redis-server", 30.0)
    return report


def stop_service(settings: Settings, name: str, marker: str, timeout_s: float) -> str:
    path = pidfile(settings, name)
    pid = read_pidfile(path, marker)
    if pid is None:
        return "not running"
    # The main process first (a Celery worker's warm shutdown), then anything left in its group.
    gone = stop_process(pid, timeout_s=timeout_s, group=False)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    gone = gone or wait_gone(pid, 5.0)
    with contextlib.suppress(OSError):
        path.unlink()
    return f"stopped (pid {pid})" if gone else f"could not stop pid {pid}"


def status(settings: Settings) -> dict[str, int | None]:
    """Service -> pid (None when not running)."""
    out: dict[str, int | None] = {}
    if settings.embedded_redis:
        out["redis"] = read_pidfile(pidfile(settings, "redis"), "redis-server")
    for service in celery_services(settings):
        out[service.name] = read_pidfile(pidfile(settings, service.name), service.marker)
    return out


def redis_reachable(settings: Settings) -> bool:
    try:
        return bool(redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False
