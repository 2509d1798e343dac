"""The control plane's Celery app with providers that fail on purpose: the fault injection
behind the provider-API scenario. A test runs the control worker on this module
(`celery -A tests.e2e.flaky_provider worker`) instead of `queue_app.celery_app`; the stages,
watchdog and provider are the real ones, only wrapped.

Faults are armed per operation in `$SAEFLEET_HOME/faults/<operation>.json`: a list of modes,
one per upcoming call, consumed in order by all the worker's processes (under a file lock):

    before   the call fails without acting (the API answered 503)
    after    the call acts, then fails (the reply was lost: a timeout)
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jobs.instances
from jobs.providers import Instance, LaunchRequest, Provider, ProviderError
from queue_app.celery_app import app
from queue_app.settings import Settings

Mode = Literal["before", "after"]
Operation = Literal["launch", "terminate"]


def faults_dir(home: Path) -> Path:
    return home / "faults"


def arm(home: Path, operation: Operation, modes: list[Mode]) -> None:
    directory = faults_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{operation}.json").write_text(json.dumps(modes))


def remaining(home: Path, operation: Operation) -> list[Mode]:
    path = faults_dir(home) / f"{operation}.json"
    return json.loads(path.read_text()) if path.exists() else []


def _next_fault(home: Path, operation: Operation) -> Mode | None:
    path = faults_dir(home) / f"{operation}.json"
    if not path.exists():
        return None
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        modes = json.load(f)
        if not modes:
            return None
        f.seek(0)
        f.truncate()
        json.dump(modes[1:], f)
        return modes[0]  # type: ignore[no-any-return]


class FlakyProvider:
    """`inner` with launch and terminate failing as armed; everything else passes through."""

    def __init__(self, inner: Provider, home: Path) -> None:
        self.inner, self.home = inner, home

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def launch(self, request: LaunchRequest) -> Instance:
        return self._call("launch", lambda: self.inner.launch(request))

    def terminate(self, instance_id: str) -> None:
        self._call("terminate", lambda: self.inner.terminate(instance_id))

    def _call(self, operation: Operation, act: Callable[[], Any]) -> Any:
        mode = _next_fault(self.home, operation)
        if mode == "before":
            raise ProviderError(f"injected fault: {operation} answered 503 before acting")
        result = act()
        if mode == "after":
            raise ProviderError(f"injected fault: {operation} acted, then its reply was lost")
        return result


_get_provider = jobs.instances.get_provider


def _flaky_get_provider(spec: Any, settings: Settings) -> Provider:
    return FlakyProvider(_get_provider(spec, settings), settings.home)  # type: ignore[return-value]


jobs.instances.get_provider = _flaky_get_provider

__all__ = ["FlakyProvider", "app", "arm", "remaining"]
