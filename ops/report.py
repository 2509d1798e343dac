"""`saefleet sweep report ID`: a sweep's report as HTML or Markdown, with PNG plots.

The report holds the summary line, one row per job (state, attempts, preemptions, cost,
instance-hours, tokens, FVU, L0, CE loss recovered, the grid values it ran with) and three
plots: training-loss curves (from each job's metrics history), the FVU-vs-L0 frontier and the
cost per job. It is written into `<sweep artifacts>/report/` (or `--out`); the text passes
through the log redactor, so no secret reaches it.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from jobs.job_cost import costs_by_job
from ops.views import terminal
from queue_app.connection import get_store
from queue_app.logs import redact
from queue_app.records import JobRecord, SweepRecord
from queue_app.settings import Settings, get_settings
from queue_app.store import Store

Format = Literal["html", "md"]
COLUMNS = (
    ("job", "job_id"),
    ("name", "name"),
    ("state", "state"),
    ("attempts", "attempts"),
    ("preemptions", "preemptions"),
    ("cost $", "cost_usd"),
    ("instance-h", "instance_hours"),
    ("tokens", "tokens"),
    ("FVU", "fvu"),
    ("L0", "l0"),
    ("CE recovered", "ce_loss_recovered"),
    ("grid values", "overrides"),
)


# ---- data ---------------------------------------------------------------------------------------


def final_metric(metrics: dict[str, Any], name: str) -> Any:
    """A final evaluation metric: from `evals` (the trainer's metrics.json), else top level."""
    evals = metrics.get("evals")
    if isinstance(evals, dict) and name in evals:
        return evals[name]
    return metrics.get(name)


def job_history(job: JobRecord) -> list[dict[str, Any]]:
    """Training history (step, tokens, loss, ...) from the job's metrics or its final folder."""
    history = job.metrics.get("history")
    if history:
        return list(history)
    if job.artifacts_dir:
        from jobs.objectstore import final_prefix, open_store

        key = f"{final_prefix(job.sweep_id, job.job_id)}/metrics.json"
        raw = open_store(get_settings()).get_bytes(key)
        if raw is not None:
            return list(json.loads(raw).get("history", []))
    return []


def job_rows(store: Store, sweep: SweepRecord) -> list[dict[str, Any]]:
    instances = [i for i in store.instances() if i.sweep_id == sweep.sweep_id]
    job_usd = costs_by_job(instances)
    rows = []
    for job in store.sweep_jobs(sweep.sweep_id):
        mine = [i for i in instances if i.job_id == job.job_id]
        train = job.metrics.get("train", {})
        rows.append(
            {
                "job_id": job.job_id,
                "name": job.name,
                "state": str(job.state),
                "reason": job.reason,
                "attempts": job.attempt,
                "preemptions": job.preemptions,
                "cost_usd": round(job_usd.get(job.job_id, 0.0), 6),
                "instance_hours": round(sum(i.running_hours() for i in mine), 6),
                "tokens": train.get("tokens", job.progress.get("tokens")),
                "fvu": final_metric(job.metrics, "fvu"),
                "l0": final_metric(job.metrics, "l0"),
                "ce_loss_recovered": final_metric(job.metrics, "ce_loss_recovered"),
                "overrides": job.job_spec.overrides,
                "history": job_history(job),
            }
        )
    return rows


# ---- plots --------------------------------------------------------------------------------------


def plot_loss_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against tokens, one line per job with a history."""
    curves = [(r["name"], r["history"]) for r in rows if r["history"]]
    if not curves:
        return None
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in curves:
        ax.plot([h["tokens"] for h in history], [h["loss"] for h in history], label=name)
    ax.set(xlabel="tokens", ylabel="training loss", yscale="log", title="training loss")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> Path | None:
    points = [
        {"name": r["name"], "fvu": r["fvu"], "l0": r["l0"]}
        for r in rows
        if r["fvu"] is not None and r["l0"] is not None
    ]
    if not points:
        return None
    from sae.plots import plot_frontier as draw

    return draw(points, path)


def plot_cost(rows: list[dict[str, Any]], path: Path) -> Path | None:
    if not rows:
        return None
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 4))
    ax.bar([r["name"] for r in rows], [r["cost_usd"] for r in rows])
    ax.set(ylabel="USD", title="cost per job")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- documents ----------------------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def headline(sweep: SweepRecord, rows: list[dict[str, Any]]) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["state"] for r in rows).items()))
    cost = sum(r["cost_usd"] for r in rows)
    budget = f" of a ${sweep.budget_usd:.2f} budget" if sweep.budget_usd else ""
    hours = sum(r["instance_hours"] for r in rows)
    return f"{states}; ${cost:.2f}{budget}; {hours:.2f} instance-hours"


def markdown(sweep: SweepRecord, rows: list[dict[str, Any]], plots: list[Path]) -> str:
    lines = [f"# Sweep {sweep.name} ({sweep.sweep_id})", "", headline(sweep, rows), ""]
    lines.append("| " + " | ".join(title for title, _ in COLUMNS) + " |")
    lines.append("|" + " --- |" * len(COLUMNS))
    for row in rows:
        cells = (cell(row[key]).replace("|", "\\|") for _, key in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    failed = [r for r in rows if r["reason"]]
    if failed:
        lines += ["", "## Reasons", ""] + [f"- {r['job_id']}: {r['reason']}" for r in failed]
    return "\n".join(lines) + "\n"


def html_page(sweep: SweepRecord, rows: list[dict[str, Any]], plots: list[Path]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(title)}</th>" for title, _ in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(cell(row[key]))}</td>" for _, key in COLUMNS) + "</tr>"
        for row in rows
    )
    images = "".join(f'<img src="{e(p.name)}" alt="{e(p.stem)}">' for p in plots)
    reasons = "".join(f"<li>{e(r['job_id'])}: {e(r['reason'])}</li>" for r in rows if r["reason"])
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>sweep {e(sweep.name)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:48%;margin:1%}"
        "</style></head><body>"
        f"<h1>Sweep {e(sweep.name)} ({e(sweep.sweep_id)})</h1>"
        f"<p>{e(headline(sweep, rows))}. Generated {generated}.</p>"
        f"<table><tr>{head}</tr>{body}</table>{images}"
        + (f"<h2>Reasons</h2><ul>{reasons}</ul>" if reasons else "")
        + "</body></html>\n"
    )


def write_report(
    store: Store, settings: Settings, sweep_id: str, fmt: Format, out_dir: Path | None = None
) -> Path:
    """Write the report and its plots; returns the report file."""
    sweep = store.sweep(sweep_id)
    rows = job_rows(store, sweep)
    out_dir = out_dir or settings.sweep_dir(sweep_id) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = [
        plot_loss_curves(rows, out_dir / "loss_curves.png"),
        plot_frontier(rows, out_dir / "fvu_vs_l0.png"),
        plot_cost(rows, out_dir / "cost_per_job.png"),
    ]
    plots = [p for p in drawn if p is not None]
    text = markdown(sweep, rows, plots) if fmt == "md" else html_page(sweep, rows, plots)
    path = out_dir / f"report.{fmt}"
    path.write_text(redact(text))
    return path


def report_command(
    sweep_id: str,
    fmt: Annotated[str, typer.Option("--format", help="html or md.")] = "html",
    out: Annotated[
        Path | None, typer.Option(help="Folder to write into [default: the sweep's artifacts].")
    ] = None,
) -> None:
    """Write a sweep's report (summary table, loss curves, FVU-vs-L0, cost per job)."""
    if fmt not in ("html", "md"):
        raise typer.BadParameter("--format must be html or md")
    settings = get_settings()
    path = write_report(
        get_store(settings), settings, sweep_id, "md" if fmt == "md" else "html", out
    )
    terminal().print(f"report: {path}", highlight=False)
