"""What the operator scripts share: a step-by-step report that prints each step as it happens
(or stays quiet for `--json`), and the entry point that turns one command into a script."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import typer
from rich.console import Console
from rich.markup import escape

from ops.views import terminal
from queue_app.logs import redact, setup_logging
from queue_app.settings import Settings

log = logging.getLogger("saefleet.ops")
OPS_SERVICE = "ops"


@dataclass
class Step:
    """One thing a script tried, whether it was achieved, and what it found."""

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


class StepReport:
    """Steps in order; printed as they are recorded unless `console` is None."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.steps: list[Step] = []

    def record(self, name: str, ok: bool, detail: str, **data: Any) -> Step:
        step = Step(name, ok, redact(detail), data)
        self.steps.append(step)
        log.log(
            logging.INFO if ok else logging.WARNING,
            "%s: %s: %s",
            name,
            "ok" if ok else "FAILED",
            detail,
        )
        if self.console is not None:
            mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
            self.console.print(f"{mark} [bold]{escape(name)}[/]: {escape(step.detail)}")
        return step

    def note(self, text: str) -> None:
        """A progress line between steps (human output only)."""
        if self.console is not None:
            self.console.print(f"     {escape(redact(text))}", style="dim")

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def as_json(self, **extra: Any) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [asdict(s) for s in self.steps], **extra}

    def finish(self, json_out: bool, **extra: Any) -> None:
        """Print the JSON form when asked; exit 1 when a step was not achieved."""
        if json_out:
            text = json.dumps(self.as_json(**extra), indent=2, default=str)
            sys.stdout.write(redact(text) + "\n")
        if not self.ok:
            raise typer.Exit(1)


def log_to_file(settings: Settings) -> None:
    """Record the steps in `SAEFLEET_HOME/logs/ops.log` too (the console shows them already)."""
    setup_logging(OPS_SERVICE, settings.logs_dir, settings.log_level, console=False)


def run_script(command: Callable[..., None]) -> None:
    """Run one typer command as a script (`ops/drain`, `ops/teardown`): exit 0 when every step
    was achieved, 1 when one was not or Redis is needed but unreachable, 2 on bad input."""
    app = typer.Typer(add_completion=False)
    app.command()(command)
    try:
        code = app(standalone_mode=False)  # a typer.Exit comes back as its code
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except redis.exceptions.ConnectionError:
        terminal(stderr=True).print(
            "[red]error:[/] cannot reach saefleet's Redis: start it with `saefleet up` "
            "(or set SAEFLEET_REDIS_URL)",
            highlight=False,
        )
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        show = getattr(exc, "show", None)
        if show:
            show()
        sys.exit(code)
