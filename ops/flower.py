"""`saefleet flower`: Flower (the Celery monitor) against saefleet's broker, with basic auth.

The credentials come from SAEFLEET_FLOWER_USER / SAEFLEET_FLOWER_PASSWORD; without a password
one is generated once into `SAEFLEET_HOME/flower/password` (0600) and printed that one time.
They reach Flower through its environment (FLOWER_BASIC_AUTH), never its command line, where
`ps` would show them. Flower binds loopback by default; it refuses to bind beyond loopback
without auth. Flower answers `/metrics` and `/healthcheck` without auth whatever we configure:
one more reason to keep it on loopback (or behind a proxy).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ops.errors import OpsError
from ops.views import terminal
from queue_app.celery_commands import celery_argv
from queue_app.settings import Settings, get_settings, read_or_create_secret

LOOPBACK_NAMES = frozenset({"localhost"})
FLOWER_SERVICE_NAME = "flower"


class FlowerConfigError(OpsError):
    """Flower cannot start with these settings; the message says what to change."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    generated_at: Path | None  # the file a password was just generated into, else None

    @property
    def basic_auth(self) -> str:
        return f"{self.user}:{self.password}"


def is_loopback(address: str) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1, localhost); '' and 0.0.0.0 are not."""
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def password_file(settings: Settings) -> Path:
    return settings.flower_dir / "password"


def credentials(settings: Settings) -> Credentials:
    """The basic-auth credentials: from the environment, else the generated password file."""
    user = settings.flower_user
    if ":" in user or "," in user or not user:
        raise FlowerConfigError(
            f"SAEFLEET_FLOWER_USER {user!r} is not usable: it must be non-empty, without ':' or ','"
        )
    given = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if given:  # an empty SAEFLEET_FLOWER_PASSWORD (a blank line in .env) counts as unset
        if "," in given:
            raise FlowerConfigError(
                "SAEFLEET_FLOWER_PASSWORD must not contain ',' "
                "(Flower splits its credential list on commas)"
            )
        return Credentials(user, given, None)
    path = password_file(settings)
    existed = path.exists()
    password = read_or_create_secret(path)
    return Credentials(user, password, None if existed else path)


def check_bind(address: str, auth: bool) -> None:
    if not auth and not is_loopback(address):
        raise FlowerConfigError(
            f"refusing to serve Flower on {address!r} without auth: bind a loopback address "
            "(the default, 127.0.0.1) or drop --no-auth"
        )


def flower_argv(settings: Settings, address: str, port: int, persistent: bool) -> list[str]:
    argv = celery_argv("flower", f"--address={address}", f"--port={port}")
    if persistent:
        argv += [
            "--persistent=True",
            f"--db={settings.flower_dir / 'flower.db'}",
            "--state_save_interval=60000",
        ]
    return argv


def flower_env(settings: Settings, creds: Credentials | None) -> dict[str, str]:
    """Flower's environment: ours minus any FLOWER_* the caller had, plus the credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["SAEFLEET_HOME"] = str(settings.home)
    env["SAEFLEET_SERVICE_NAME"] = FLOWER_SERVICE_NAME
    if creds is not None:
        env["FLOWER_BASIC_AUTH"] = creds.basic_auth
    return env


def prepare(
    settings: Settings, address: str, port: int, persistent: bool, auth: bool
) -> tuple[list[str], dict[str, str], Credentials | None]:
    """Everything `exec` needs to start Flower; FlowerConfigError when it must not start."""
    check_bind(address, auth)
    creds = credentials(settings) if auth else None
    settings.flower_dir.mkdir(parents=True, exist_ok=True)
    return flower_argv(settings, address, port, persistent), flower_env(settings, creds), creds


def exec_flower(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with Flower (signals reach it directly; it never returns)."""
    os.execve(argv[0], argv, env)


def flower_command(
    address: Annotated[
        str | None, typer.Option(help="Address to bind [default: SAEFLEET_FLOWER_ADDRESS].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to serve on [default: SAEFLEET_FLOWER_PORT].")
    ] = None,
    persistent: Annotated[
        bool,
        typer.Option(
            "--persistent/--no-persistent", help="Keep task history in SAEFLEET_HOME/flower."
        ),
    ] = True,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without basic auth (loopback only).")
    ] = False,
) -> None:
    """Start Flower (workers, queues, task history) on our broker, with basic auth."""
    settings = get_settings()
    bind = address if address is not None else settings.flower_address
    try:
        argv, env, creds = prepare(
            settings, bind, port or settings.flower_port, persistent, auth=not no_auth
        )
    except FlowerConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = terminal(stderr=True)
    if creds is not None and creds.generated_at is not None:
        console.print(
            f"Flower user [bold]{creds.user}[/], generated password [bold]{creds.password}[/]\n"
            f"(shown once; kept in {creds.generated_at}, mode 0600; "
            "set SAEFLEET_FLOWER_PASSWORD to choose your own)",
            highlight=False,
        )
    console.print(f"Flower on http://{bind}:{port or settings.flower_port}/", highlight=False)
    exec_flower(argv, env)
