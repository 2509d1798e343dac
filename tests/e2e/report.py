"""The fault scenarios' report, a pytest plugin (tests/conftest.py loads it): one line per
scenario (outcome, time to converge, steps of training lost), printed at the end of the run and
written as JSON (to $SAEFLEET_FAULT_REPORT, else into the run's temporary directory).

A scenario records its row in the process that runs it; the row travels to the process that
reports (the pytest-xdist controller, or the same process without xdist) as a user property of
the test's report."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

PROPERTY = "fault_scenario"


@dataclass
class Row:
    """One line of the fault report."""

    scenario: str
    outcome: str = "did not run"
    converge_s: float | None = None
    steps_lost: int | None = None
    preemptions: int | None = None
    attempts: int | None = None
    sweep_s: float | None = None
    note: str = ""


_recorded: list[Row] = []  # rows of the scenarios run in this process
_reported: list[Row] = []  # rows of every scenario of the run (in the reporting process)
_written = pytest.StashKey[Path]()


@contextmanager
def scenario(name: str) -> Iterator[Row]:
    """Record one scenario's row, also when it fails (the failure becomes its outcome)."""
    row = Row(scenario=name)
    _recorded.append(row)
    try:
        yield row
    except BaseException as exc:
        row.outcome = f"did not converge: {type(exc).__name__}: {str(exc)[:300]}"
        raise
    row.outcome = "converged"


@pytest.fixture(autouse=True)
def _report_scenario_rows(request: pytest.FixtureRequest) -> Iterator[None]:
    """Attach the rows a test recorded to its report (they reach the reporting process)."""
    before = len(_recorded)
    yield
    for row in _recorded[before:]:
        request.node.user_properties.append((PROPERTY, asdict(row)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _reported.extend(Row(**value) for name, value in report.user_properties if name == PROPERTY)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _reported and not hasattr(session.config, "workerinput"):
        path = Path(
            os.environ.get("SAEFLEET_FAULT_REPORT")
            or session.config._tmp_path_factory.getbasetemp() / "fault-report.json"  # type: ignore[attr-defined]
        )
        path.write_text(json.dumps([asdict(row) for row in _reported], indent=2))
        session.config.stash[_written] = path


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if not _reported:
        return
    terminalreporter.section("fault scenarios")
    for line in report_lines(_reported):
        terminalreporter.write_line(line)
    if _written in config.stash:
        terminalreporter.write_line(f"(written to {config.stash[_written]})")


def report_lines(rows: list[Row]) -> list[str]:
    lines = [
        f"{'scenario':34} {'outcome':12} {'converge s':>10} {'steps lost':>10} "
        f"{'preempt':>7} {'attempts':>8} {'sweep s':>8}"
    ]
    for row in rows:
        outcome = "converged" if row.outcome == "converged" else "FAILED"
        lines.append(
            f"{row.scenario:34} {outcome:12} {_n(row.converge_s):>10} {_n(row.steps_lost):>10} "
            f"{_n(row.preemptions):>7} {_n(row.attempts):>8} {_n(row.sweep_s):>8}"
            + (f"  {row.note}" if row.note else "")
        )
        if outcome != "converged":
            lines.append(f"    {row.outcome}")
    return lines


def _n(value: Any) -> str:
    return "-" if value is None else str(value)
