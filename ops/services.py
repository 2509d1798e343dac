"""`saefleet service NAME`: one long-running service in the foreground, as compose.yaml runs it.

`control`, `beat` and `tunnels` are exactly the command lines `saefleet up` starts detached
(ops.controlplane owns them); `gpu-worker` is the GPU-side Celery worker (role gpu, one
process) consuming one training queue. `--check` is the container healthcheck: the worker
answers a ping, or the service runs as the container's main process (or under `saefleet up`).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer

from queue_app.celery_commands import WORKER_MARKER, worker_argv
from queue_app.processes import cmdline, read_pidfile
from queue_app.settings import Settings, get_settings

GPU_WORKER = "gpu-worker"
PING_TIMEOUT_S = 5.0
CONTAINER_MAIN_PID = 1


def service_argv(settings: Settings, name: str, gpu_queue: str | None) -> tuple[list[str], str]:
    """The command line of service `name` and the text its command line is recognised by."""
    from ops.controlplane import celery_services

    if name == GPU_WORKER:
        if not gpu_queue:
            raise typer.BadParameter("gpu-worker needs --queue (or SAEFLEET_GPU_QUEUE)")
        argv = worker_argv([gpu_queue], node="gpu@%h", concurrency=1, log_level=settings.log_level)
        return argv, WORKER_MARKER
    for service in celery_services(settings):
        if service.name == name:
            return service.argv, service.marker
    known = [s.name for s in celery_services(settings)] + [GPU_WORKER]
    raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(known)}")


def worker_node(name: str) -> str | None:
    """The Celery node name a service's worker runs as in this container, if it is a worker."""
    prefix = {"control": "control", GPU_WORKER: "gpu"}.get(name)
    return f"{prefix}@{socket.gethostname()}" if prefix else None


def healthy(settings: Settings, name: str, marker: str) -> bool:
    node = worker_node(name)
    if node is not None:
        from queue_app.celery_app import make_app

        app = make_app(settings)
        try:
            return bool(app.control.ping(destination=[node], timeout=PING_TIMEOUT_S, limit=1))
        finally:
            app.close()
    from ops.controlplane import pidfile

    # In a container the service is process 1 (`saefleet service` execs it); on a host,
    # `saefleet up` keeps its pid file.
    return marker in cmdline(CONTAINER_MAIN_PID) or (
        read_pidfile(pidfile(settings, name), marker) is not None
    )


def service_command(
    name: Annotated[str, typer.Argument(help="control, beat, tunnels or gpu-worker.")],
    check: Annotated[
        bool, typer.Option("--check", help="Exit 0 when the service is healthy, else 1.")
    ] = False,
    queue: Annotated[
        str | None,
        typer.Option(envvar="SAEFLEET_GPU_QUEUE", help="gpu-worker: the training queue."),
    ] = None,
) -> None:
    """Run a control-plane service in the foreground (what compose.yaml runs)."""
    settings = get_settings()
    argv, marker = service_argv(settings, name, queue)
    if check:
        raise typer.Exit(0 if healthy(settings, name, marker) else 1)
    env = {**os.environ, "SAEFLEET_SERVICE_NAME": name}
    if name == GPU_WORKER:
        env["SAEFLEET_WORKER_ROLE"] = "gpu"
    os.execve(argv[0], argv, env)
