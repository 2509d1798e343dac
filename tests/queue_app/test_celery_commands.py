"""The Celery command lines: one builder, the options each kind of worker asks for."""

from __future__ import annotations

from queue_app.celery_commands import BEAT_MARKER, WORKER_MARKER, beat_argv, worker_argv


def test_a_worker_consumes_its_queues_as_its_node() -> None:
    argv = worker_argv(["control", "watchdog"], node="n@h", concurrency=3, log_level="INFO")
    assert " ".join(argv[1:]).startswith("-m celery -A queue_app.celery_app worker")
    assert WORKER_MARKER in " ".join(argv)
    assert argv[argv.index("-Q") + 1] == "control,watchdog"
    assert argv[argv.index("-n") + 1] == "n@h" and argv[argv.index("-c") + 1] == "3"
    assert argv[-2:] == ["--loglevel", "INFO"]
    assert {"-E", "--without-gossip", "--without-mingle"} <= set(argv)
    assert "--without-heartbeat" not in argv


def test_worker_options_follow_the_flags() -> None:
    argv = worker_argv(
        ["q"],
        node="n@h",
        concurrency=1,
        log_level="WARNING",
        app="pkg.mod:app",
        python="/venv/bin/python",
        events=False,
        mingle=True,
        heartbeat=False,
    )
    assert argv[:5] == ["/venv/bin/python", "-m", "celery", "-A", "pkg.mod:app"]
    assert "-E" not in argv and "--without-mingle" not in argv
    assert "--without-heartbeat" in argv


def test_beat_keeps_its_state_in_the_schedule_file() -> None:
    argv = beat_argv("/run/celerybeat-schedule", "DEBUG")
    assert BEAT_MARKER in " ".join(argv)
    assert argv[argv.index("-s") + 1] == "/run/celerybeat-schedule"
