"""The command lines of saefleet's Celery processes: workers (control, GPU-side, tests and
benchmarks), beat and Flower, and the text each is recognised by in a process's command line.

Every process that starts a Celery program builds its argv here, so a worker option changes in
one place. Which queues a worker consumes comes from the routing table (queue_app.celery_app).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CELERY_APP = "queue_app.celery_app"
"""The module holding the Celery app that every saefleet worker and Flower run."""
BEAT_APP = "watchdog.schedule"
"""The module holding the beat schedule (the watchdog's ticks)."""
WORKER_MARKER = f"{CELERY_APP} worker"
"""Text in the command line of every saefleet worker (pid files check it against reuse)."""
BEAT_MARKER = f"{BEAT_APP} beat"
"""Text in the command line of beat."""


def celery_argv(
    command: str, *options: str, app: str = CELERY_APP, python: str = sys.executable
) -> list[str]:
    """`python -m celery -A app command options...`."""
    return [python, "-m", "celery", "-A", app, command, *options]


def worker_argv(
    queues: Sequence[str],
    *,
    node: str,
    concurrency: int,
    log_level: str,
    app: str = CELERY_APP,
    python: str = sys.executable,
    events: bool = True,
    mingle: bool = False,
    heartbeat: bool = True,
) -> list[str]:
    """A Celery worker consuming `queues` as node `node` with `concurrency` processes.

    Workers never gossip; `events` (-E) lets Flower watch them, `mingle` syncs revoked task ids
    from the other workers at start-up, `heartbeat` sends worker heartbeats."""
    options = ["-Q", ",".join(queues), "-c", str(concurrency), "-n", node]
    if events:
        options.append("-E")
    options.append("--without-gossip")
    if not mingle:
        options.append("--without-mingle")
    if not heartbeat:
        options.append("--without-heartbeat")
    options += ["--loglevel", log_level]
    return celery_argv("worker", *options, app=app, python=python)


def beat_argv(schedule_file: str, log_level: str, python: str = sys.executable) -> list[str]:
    """Celery beat running the watchdog's schedule, its state kept in `schedule_file`."""
    return celery_argv(
        "beat", "-s", schedule_file, "--loglevel", log_level, app=BEAT_APP, python=python
    )
