"""The fault suite's report: one line per scenario (outcome, time to converge, steps of training
lost), printed at the end of the session and written as JSON (to $SAEFLEET_FAULT_REPORT, else
into the session's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import harness

_written: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if harness.ROWS:
        path = Path(
            os.environ.get("SAEFLEET_FAULT_REPORT")
            or tmp_path_factory.getbasetemp() / "fault-report.json"
        )
        path.write_text(harness.report_json())
        _written.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.ROWS:
        return
    terminalreporter.section("fault scenarios")
    for line in harness.report_lines():
        terminalreporter.write_line(line)
    for path in _written:
        terminalreporter.write_line(f"(written to {path})")
