"""`saefleet demo`: start the control plane if needed and run a small sweep on the local provider
(each instance a real sshd on loopback), live, then print the summary and where results are.

The demo's model and data are made locally (nothing is downloaded): a tiny Llama-style LM and a
seeded synthetic chat corpus with PII, by the SAE package's own CLI (in subprocesses, so this
process never imports torch).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from jobs.job_cost import job_cost_usd
from jobs.objectstore import open_store
from jobs.spec import load_sweep_file
from jobs.submission import submit_sweep
from jobs.tiny_sweep import tiny_sweep
from ops import controlplane
from ops.follow import SweepTimeout, follow_sweep
from ops.views import grid_label, job_suffix
from queue_app.connection import get_store
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import JobState
from queue_app.store import Store

K_VALUES = (8, 16, 32, 64)
DEMO_SIZE: dict[str, Any] = {
    "layer": 2,
    "sae.n_latents": 512,  # 8 x the tiny LM's width
    "sae.aux_k": 64,
    "train.total_tokens": 65_536,
    "train.batch_tokens": 1024,
    "train.warmup_steps": 8,
    "early_stop.val_tokens": 2048,
    "evals.holdout_tokens": 8192,
    "segment_minutes": 0.25,
}
"""Where the demo's jobs differ from the tiny sweep's (dotted paths)."""
TIMEOUT_S = 30 * 60


def run_demo(console: Console, n_jobs: int = 3) -> int:
    """Run the demo sweep; returns the exit code (0 when every job succeeded)."""
    settings = get_settings()
    open_store(settings).check()  # an unusable SAEFLEET_STORE_URL: exit 2 before anything runs
    console.rule("[bold]saefleet demo")
    console.print("[bold]1/4[/] control plane")
    for name, what in controlplane.up(settings).items():
        console.print(f"    {name:8} {what}")
    console.print("[bold]2/4[/] demo model and data (made once, no downloads)")
    sweep_file = prepare_assets(settings, n_jobs)
    spec = load_sweep_file(sweep_file)
    jobs = spec.expand()
    store = get_store(settings)
    sweep = submit_sweep(spec, jobs, store)
    console.print(
        f"[bold]3/4[/] sweep [bold]{sweep.sweep_id}[/]: {len(jobs)} jobs "
        f"(sae.k = {', '.join(str(j.overrides['sae.k']) for j in jobs)}) on the local provider"
    )
    started = time.monotonic()
    try:
        final = follow_sweep(console, store, sweep.sweep_id, timeout_s=TIMEOUT_S)
    except SweepTimeout as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    elapsed = time.monotonic() - started
    console.print(f"[bold]4/4[/] finished in {elapsed:.0f}s")
    console.print(results_table(store, sweep.sweep_id))
    console.print(f"summary: {final.summary_path}")
    artifacts = (final.summary_path or "").rpartition("/")[0]
    console.print(f"artifacts (SAE weights, metrics, plots, checkpoints): {artifacts}")
    console.print(f"left running at the provider: {len(store.instances(live_only=True))} instances")
    ok = all(j.state is JobState.SUCCEEDED for j in store.sweep_jobs(sweep.sweep_id))
    return 0 if ok else 1


def prepare_assets(settings: Settings, n_jobs: int) -> Path:
    """The tiny LM, the corpus and the sweep file under SAEFLEET_HOME/demo."""
    demo = settings.home / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    model, corpus = demo / "tiny-lm", demo / "corpus.jsonl"
    if not (model / "config.json").exists():
        _sae_cli("make-tiny-lm", str(model))
    if not corpus.exists():
        _sae_cli("make-corpus", str(corpus), "--n", "3000", "--seed", "0")
    sweep = demo / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(demo_sweep(model, corpus, n_jobs), sort_keys=False))
    return sweep


def demo_sweep(model: Path, corpus: Path, n_jobs: int) -> dict[str, Any]:
    """The tiny sweep over k, sized up so that the metrics are worth a look."""
    return tiny_sweep(
        model,
        corpus,
        name="demo-k-sweep",
        provider={"name": "local", "price_per_hour": 0.0},
        grid={"sae.k": list(K_VALUES[: max(1, min(n_jobs, len(K_VALUES)))])},
        **DEMO_SIZE,
    )


def _sae_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sae", *args], check=True, capture_output=True)


def results_table(store: Store, sweep_id: str) -> Table:
    """One row per job, told apart by its id within the sweep (`0002`) and its grid values."""
    table = Table(title=f"results of sweep {sweep_id}")
    for column in ("job", "grid", "state", "FVU", "L0", "CE recovered", "PII F1", "cost $"):
        table.add_column(column, no_wrap=column in ("job", "grid", "state"))
    for job in store.sweep_jobs(sweep_id):
        m = job.metrics
        table.add_row(
            job_suffix(job.job_id, sweep_id),
            grid_label(job.job_spec.overrides, job.name),
            str(job.state),
            _fmt(m.get("fvu")),
            _fmt(m.get("l0")),
            _fmt(m.get("ce_loss_recovered")),
            _fmt(m.get("pii_mean_probe_f1")),
            f"{job_cost_usd(store, job.job_id):.4f}",
        )
    return table


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
