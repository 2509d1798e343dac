"""`sweep report`: the summary table and the three plots, as Markdown and as HTML."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.report import final_metric, write_report
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import add_instance, make_sweep

PNG_MAGIC = b"\x89PNG"


@pytest.fixture
def finished_sweep(store: Store) -> str:
    jobs = make_sweep(store, "swrep", [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.QUEUED])
    for i, job in enumerate(jobs[:2]):
        history = [{"step": s, "tokens": 512 * s, "loss": 1.0 / s} for s in range(1, 6)]
        metrics = {
            "train": {"tokens": 2560},
            "evals": {"fvu": 0.3 / (i + 1), "l0": 8.0 * (i + 1), "ce_loss_recovered": 0.9},
            "history": history,
        }
        store.update_job(job.job_id, 1, metrics=metrics)
        add_instance(store, job, f"i-{i}", price_per_hour=1.5, hours=0.2, terminated=True)
    failed = jobs[2]
    store.transition(failed.job_id, 1, JobState.FAILED, reason="verify_gpu: no CUDA | token=x")
    return "swrep"


def test_markdown_report_has_the_table_and_plots(
    store: Store, settings: Settings, finished_sweep: str, tmp_path: Path
) -> None:
    path = write_report(store, settings, finished_sweep, "md", tmp_path)
    text = path.read_text()
    assert text.startswith("# Sweep swrep-name (swrep)")
    assert "1 FAILED, 2 SUCCEEDED; $0.60 of a $10.00 budget; 0.40 instance-hours" in text
    rows = [line for line in text.splitlines() if line.startswith("| swrep-")]
    assert len(rows) == 3
    assert "| 0.3 | 8 | 0.9 | sae.k=8 |" in rows[0]
    assert "- swrep-0002: verify_gpu: no CUDA | token=x" in text
    for name in ("loss_curves", "fvu_vs_l0", "cost_per_job"):
        assert f"![{name}]({name}.png)" in text
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_html_report_via_the_cli(settings: Settings, finished_sweep: str) -> None:
    result = CliRunner().invoke(app, ["sweep", "report", finished_sweep])
    assert result.exit_code == 0, result.output
    path = settings.sweep_dir(finished_sweep) / "report" / "report.html"
    page = path.read_text()
    assert "<table>" in page and page.count("<tr>") == 4
    assert '<img src="fvu_vs_l0.png"' in page
    assert "no CUDA | token=x" in page


def test_a_sweep_without_metrics_still_reports(store: Store, settings: Settings) -> None:
    make_sweep(store, "swbare", [JobState.QUEUED])
    path = write_report(store, settings, "swbare", "md")
    assert "1 QUEUED" in path.read_text()
    assert sorted(p.name for p in path.parent.glob("*.png")) == ["cost_per_job.png"]


def test_final_metric_prefers_evals() -> None:
    assert final_metric({"evals": {"fvu": 0.1}, "fvu": 0.5}, "fvu") == 0.1
    assert final_metric({"fvu": 0.5}, "fvu") == 0.5
    assert final_metric({}, "fvu") is None
