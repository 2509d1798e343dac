"""`saefleet watchdog tick`: run watchdog ticks in the foreground and print what each did
(`--once` for one tick). The lead's CLI registers `tick_command`."""

from __future__ import annotations

import json
import sys
import time

import redis
from rich.console import Console
from rich.table import Table

from ops.views import terminal
from queue_app.settings import get_settings
from watchdog.report import TickReport
from watchdog.tick import live_context, run_tick


def tick_command(once: bool, json_out: bool) -> int:
    """Run one tick (`once`), else one every `SAEFLEET_WATCHDOG_INTERVAL_S` until interrupted.
    Exit code 0 when the tick(s) ran (or were skipped because another tick held the lock), 1
    when a check failed or Redis is unreachable."""
    settings = get_settings()
    console, err = terminal(), terminal(stderr=True)
    status = 0
    while True:
        try:
            report = run_tick(live_context(settings))
        except redis.exceptions.ConnectionError as exc:
            err.print(f"[red]error:[/] Redis is unreachable ({exc}); is `saefleet up` running?")
            return 1
        if json_out:
            sys.stdout.write(json.dumps(report.to_dict(), default=str) + "\n")
            sys.stdout.flush()
        else:
            print_report(console, report)
        status = max(status, 1 if report.errors else 0)
        if once:
            return status
        try:
            time.sleep(settings.watchdog_interval_s)
        except KeyboardInterrupt:
            return status


def print_report(console: Console, report: TickReport) -> None:
    """A human summary of one tick: a line, then a table of actions and one of errors."""
    if report.skipped:
        console.print("watchdog tick skipped: another tick holds the fleet-wide lock")
        return
    console.print(
        f"watchdog tick: {report.instances} live instance(s), {len(report.actions)} action(s), "
        f"{len(report.errors)} error(s) in {report.duration_s:.2f}s"
    )
    for title, rows in (("actions", report.actions), ("errors", report.errors)):
        if not rows:
            continue
        table = Table(title=title)
        for column in ("check", "what", "target", "detail"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row.check, row.kind, row.target, row.detail)
        console.print(table)
