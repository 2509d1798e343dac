"""`saefleet bench preemption`: its table and its verdicts on the issue's targets (the run
itself starts a control plane and trains four jobs: it is a benchmark, not a test)."""

from __future__ import annotations

from typing import Any

from ops.bench.preemption import render, verdicts


def _result(noticed_lost: int, noticed_after_s: float) -> dict[str, Any]:
    rows = [
        {
            "boot_delay_s": 0.0,
            "notice": True,
            "steps_lost": 0,
            "after_death_s": -22.0,
            "launched_after_death_s": -29.0,
        },
        {
            "boot_delay_s": 0.0,
            "notice": False,
            "steps_lost": 30,
            "after_death_s": 12.0,
            "launched_after_death_s": 1.0,
        },
        {
            "boot_delay_s": 30.0,
            "notice": True,
            "steps_lost": noticed_lost,
            "after_death_s": noticed_after_s,
            "launched_after_death_s": -29.0,
        },
        {
            "boot_delay_s": 30.0,
            "notice": False,
            "steps_lost": 41,
            "after_death_s": 44.0,
            "launched_after_death_s": 1.0,
        },
    ]
    return {"notice_s": 30.0, "target_after_death_s": 10.0, "rows": rows}


def test_the_targets_are_met_when_no_step_is_lost_and_training_resumes_in_time() -> None:
    assert [line.endswith("met)") and "NOT" not in line for line in verdicts(_result(0, 8.0))] == [
        True,
        True,
    ]


def test_a_lost_step_or_a_slow_resume_with_notice_misses_its_target() -> None:
    lost, late = verdicts(_result(2, 11.5))
    assert "2 (target 0: NOT met)" in lost
    assert "+11.5 s" in late and "NOT met" in late


def test_the_table_has_a_row_per_case_with_where_its_seconds_went() -> None:
    result = _result(0, 8.0)
    result["rows"][2]["phases"] = {"ready": 0.5, "training_state": 4.0, "segment_started": 7.9}
    table = render(result)
    assert table.row_count == 4
    cells = {str(column.header): list(column.cells) for column in table.columns}
    assert cells["segment started"] == ["-", "-", "+7.9 s", "-"]
    assert cells["bootstrap"][2] == "-"  # a milestone the run did not record
