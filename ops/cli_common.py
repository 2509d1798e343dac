"""What every `saefleet` command shares: its consoles, how it prints an error or JSON, the store
it reads, and the options several commands take."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from ops.views import terminal
from queue_app.connection import get_store
from queue_app.settings import get_settings
from queue_app.store import Store

console = terminal()
err = terminal(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
WideFlag = Annotated[bool, typer.Option("--wide", help="Every column and full ids.")]
# The sweep loader reads the file and names what is wrong with it (missing, unreadable, not
# UTF-8...) in our own message; click's own readability check would answer first in its words.
SweepFile = Annotated[Path, typer.Argument(readable=False, show_default=False)]


def print_error(message: str) -> None:
    """One error on stderr, verbatim: user input in it is never read as markup nor wrapped."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def store() -> Store:
    return get_store(get_settings())
