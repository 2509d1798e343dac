"""`saefleet bench queue`: the report's arithmetic, and one real run end to end (its own Redis
and workers, started and stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from ops.bench.runner import STAGE_RATIO_TARGET, SUBMIT_TARGET_S, report, verdicts
from queue_app.processes import cmdline
from tests.support import REPO


def _summary(median: float) -> dict[str, Any]:
    return {"median": median, "p90": median, "min": median, "n": 1}


PUBLISHED = {
    "enqueue": {"tasks": 10_000, "plain_per_s": _summary(1000.0), "ours_per_s": _summary(800.0)},
    "submit": {
        "jobs": 1000,
        "phases_s": {"parse": 0.1, "expand": 0.1, "check": 0.2, "submit": 2.0},
        "in_process_s": _summary(2.4),
        "cli_s": _summary(3.5),
    },
}
LATENCIES = {
    "chain": {"length": 8, "plain_s": _summary(0.040), "ours_s": _summary(0.044)},
    "chord": {"headers": 100, "plain_s": _summary(0.5), "ours_s": _summary(0.75)},
}


def test_ratios_are_ours_over_plain_in_time() -> None:
    result = report(PUBLISHED, LATENCIES)
    rows = {row["what"]: row for row in result["rows"]}
    assert rows["chain of 8 no-ops"]["ratio"] == pytest.approx(1.1)
    assert rows["per stage in that chain"]["ours"] == pytest.approx(5.5)  # ms
    assert rows["chord of 100 no-op headers + body"]["ratio"] == pytest.approx(1.5)
    assert rows["enqueue 10,000 tasks"]["ratio"] == pytest.approx(1.25)  # fewer tasks/s: slower
    assert result["targets"]["stage_ratio"] == {
        "value": pytest.approx(1.1),
        "target": STAGE_RATIO_TARGET,
        "met": True,
    }
    assert result["targets"]["submit_1000_s"] == {
        "value": 3.5,
        "target": SUBMIT_TARGET_S,
        "met": True,
    }


def test_verdicts_say_which_target_was_missed() -> None:
    slow = {**LATENCIES, "chain": {**LATENCIES["chain"], "ours_s": _summary(0.060)}}
    lines = verdicts(report(PUBLISHED, slow))
    assert lines[0].startswith("per-stage overhead 1.50x plain Celery") and "MISSED" in lines[0]
    assert lines[1].endswith("met")


@pytest.mark.slow
def test_a_real_run_reports_every_shape_and_stops_what_it_started() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "queue", "--json", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [row["what"] for row in result["rows"]] == [
        "chain of 8 no-ops",
        "per stage in that chain",
        "chord of 100 no-op headers + body",
        "enqueue 10,000 tasks",
    ]
    for row in result["rows"]:
        assert row["plain"] > 0 and row["ours"] > 0 and row["ratio"] > 0
    assert result["submit"]["jobs"] == 1000 and result["submit"]["cli_s"] > 0
    assert result["machine"]["celery"] and result["machine"]["redis"]
    leftovers = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if "saefleet-queue-bench-" in cmdline(pid) or "ops.bench.tasks" in cmdline(pid)
    ]
    assert leftovers == []
