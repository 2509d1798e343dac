"""What the bad-input tests share: running the CLI (in this process, or the real command in a
subprocess) and the refusal they expect.

Bad input never gets past the edge: every malformed sweep file, unknown id and impossible
request exits with code 2 and one message that names the problem, and writes nothing to Redis.
The sweep-file cases are fuzzed with hypothesis: each example is one fault injected into a
sweep that is otherwise accepted. They run the CLI's `main` in this process (fast enough for
many examples); a few cases run the real `saefleet` command as a subprocess.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ops.cli import main
from queue_app.settings import Settings
from queue_app.store import Store
from tests.support import REPO

FUZZ = hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
INT64_MAX = 2**63 - 1


# ---- running the CLI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def problems(self) -> list[str]:
        """The error's lines, less the grid-point line that says where a job came from."""
        return [ln for ln in self.err.splitlines() if ln and not ln.startswith("(grid point")]


def saefleet(*args: str) -> Outcome:
    """Run `saefleet <args>` in this process (the console script's own `main`)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        redirect_stdout(out),
        redirect_stderr(err),
        mock.patch.object(sys, "argv", ["saefleet", *args]),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int), code
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_refused(outcome: Outcome, store: Store, *fragments: str) -> None:
    """Exit 2, one message on stderr naming the problem, nothing on stdout or in Redis."""
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.out == "", outcome.out
    assert outcome.err.startswith("error: "), outcome.err
    assert len(outcome.problems) == 1, outcome.err
    for fragment in fragments:
        assert fragment in outcome.err, (fragment, outcome.err)
    assert store.r.dbsize() == 0, sorted(store.r.keys("*"))[:10]


# ---- the sweep every fault is injected into ------------------------------------------------------


def submit(path: Path, document: Any) -> Outcome:
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    return saefleet("sweep", "submit", str(path))


def with_value(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """`document` with `dotted` set to `value`, and no grid entry that would override it."""
    out = copy.deepcopy(document)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    if dotted.startswith("job."):
        under = dotted.removeprefix("job.")
        grid = out.get("grid") or {}
        out["grid"] = {
            k: v for k, v in grid.items() if k != under and not k.startswith(f"{under}.")
        }
    return out


TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))


def run_saefleet(
    settings: Settings, *args: str, wrap: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script's command in a subprocess (`wrap`: a command line to run it under)."""
    env = {
        **os.environ,
        "SAEFLEET_HOME": str(settings.home),
        "SAEFLEET_REDIS_URL": settings.broker_url,
    }
    argv = [*(wrap or []), sys.executable, "-m", "ops.cli", *args]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
