"""`saefleet sweep publish ID --to URL [--force]`: a finished sweep's final SAEs, read from the
store (whatever SAEFLEET_STORE_URL names), copied to a Hugging Face repo, an S3 prefix or a
folder (ops.publish_targets) in SAELens' layout:

    <target>/README.md                        the sweep's metrics table and how to load each SAE
    <target>/<sae>/cfg.json                   as sae.artifacts writes it (SAELens 6 reads it)
    <target>/<sae>/sae_weights.safetensors

one `<sae>` folder per succeeded job, named after its grid point. Every check (the target's
scheme, bucket and token, that it holds nothing unless --force, the sweep's summary.json and
each final folder's store manifest) runs before anything is copied. The files are staged under
SAEFLEET_HOME, checked against the store's manifest, then handed to the target.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from jobs.objectstore import (
    ObjectEntry,
    ObjectStore,
    describe_file,
    final_prefix,
    open_store,
    read_manifest,
    summary_key,
    verify_folder,
)
from jobs.results import JobResult, SweepSummary
from ops.errors import PublishFailed, PublishRefused
from ops.publish_targets import SCHEMES, PublishTarget, open_target, overlaps
from ops.report import cell
from ops.views import terminal
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import JobState

CFG = "cfg.json"
SAE_FILES = (CFG, "sae_weights.safetensors")
"""What SAELens' loaders open in an SAE's folder (sae.artifacts' CFG and SAE_LENS_WEIGHTS,
named here so that the CLI does not import torch)."""
README = "README.md"
FIRST_METRICS = ("fvu", "l0", "ce_loss_recovered", "dead_fraction", "tokens")
"""The metrics table's first columns (other scalar metrics follow, by name)."""


@dataclass(frozen=True)
class FinalSAE:
    """One succeeded job's SAE: its folder in the target and its files in the store."""

    folder: str
    job: JobResult
    prefix: str
    """Its final folder in the store."""
    entries: dict[str, ObjectEntry]
    """What the store's manifest says of each of SAE_FILES."""


def publish(
    settings: Settings, sweep_id: str, to: str, force: bool, endpoint_url: str | None = None
) -> list[FinalSAE]:
    """Copy the sweep's final SAEs and a README to `to`; every check runs before any copy."""
    target = open_target(to, settings, endpoint_url)
    store = open_store(settings)
    if overlaps(target.url, store.url):
        raise PublishRefused(f"--to {to} overlaps the store {store.url}: publish somewhere else")
    summary, saes = final_saes(store, sweep_id)
    target.prepare(force)
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=settings.home) as temp:
        staging = Path(temp)
        cfgs = stage(store, saes, staging)
        (staging / README).write_text(readme(summary, saes, cfgs, target))
        target.upload(staging, force, f"saefleet: sweep {sweep_id} ({len(saes)} SAEs)")
    return saes


def final_saes(store: ObjectStore, sweep_id: str) -> tuple[SweepSummary, list[FinalSAE]]:
    """The sweep's summary and its succeeded jobs' final SAEs, each verified in the store."""
    raw = store.get_bytes(summary_key(sweep_id))
    if raw is None:
        raise PublishRefused(
            f"sweep {sweep_id} has no summary.json in the store {store.url} "
            "(it has not finished, or ran on another SAEFLEET_STORE_URL)"
        )
    summary = SweepSummary.model_validate_json(raw)
    saes: list[FinalSAE] = []
    for job in summary.jobs:
        if job.state is not JobState.SUCCEEDED:
            continue
        prefix = final_prefix(sweep_id, job.job_id)
        manifest = read_manifest(store, prefix)
        entries = {e.name: e for e in manifest.objects} if manifest else {}
        missing = [name for name in SAE_FILES if name not in entries]
        if missing or not verify_folder(store, prefix):
            what = f"lacks {', '.join(missing)}" if missing else "does not verify"
            raise PublishFailed(f"job {job.job_id}: {store.location(prefix)} {what}")
        folder = sae_folder_name(job)
        if any(s.folder == folder for s in saes):
            folder = f"{folder}-{job.job_id}"
        saes.append(FinalSAE(folder, job, prefix, {n: entries[n] for n in SAE_FILES}))
    if not saes:
        raise PublishRefused(f"sweep {sweep_id} has no succeeded job to publish")
    return summary, saes


def sae_folder_name(job: JobResult) -> str:
    """The grid point as a path segment: `sae.k=32,train.lr=0.001` -> `sae.k=32__train.lr=0.001`."""
    name = re.sub(r"[^A-Za-z0-9._=-]+", "-", job.name.replace(",", "__")).strip("-.")
    return name or job.job_id


def stage(store: ObjectStore, saes: list[FinalSAE], staging: Path) -> dict[str, dict[str, Any]]:
    """Download each SAE's files into `staging/<folder>/`, check them against the store's
    manifest, and return each folder's cfg.json."""
    cfgs = {}
    for sae in saes:
        dest = staging / sae.folder
        store.download(sae.prefix, list(sae.entries), dest)
        for name, entry in sae.entries.items():
            if describe_file(dest / name, name, entry.part_size).sha256 != entry.sha256:
                raise PublishFailed(f"{store.location(f'{sae.prefix}/{name}')} changed in transit")
        cfgs[sae.folder] = json.loads((dest / CFG).read_text())
    return cfgs


def readme(
    summary: SweepSummary,
    saes: list[FinalSAE],
    cfgs: dict[str, dict[str, Any]],
    target: PublishTarget,
) -> str:
    """The target's README.md: a model card header, the metrics table, how to load an SAE."""
    scalars = {k for s in saes for k, v in s.job.metrics.items() if isinstance(v, int | float)}
    metrics = [m for m in FIRST_METRICS if m in scalars] + sorted(scalars - set(FIRST_METRICS))
    titles = ["SAE", "model", "hook", "d_in", "d_sae", "k", *metrics, "job"]
    lines = [
        "---",
        "library_name: saelens",
        "tags: [saelens, sparse-autoencoder, saefleet]",
        "---",
        "",
        f"# {summary.name}: {len(saes)} sparse autoencoders",
        "",
        f"Trained by saefleet (sweep `{summary.sweep_id}`): {len(saes)} of "
        f"{len(summary.jobs)} jobs succeeded and are published here.",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + " --- |" * len(titles),
    ]
    for sae in saes:
        cfg = cfgs[sae.folder]
        meta = cfg.get("metadata", {})
        cells = [f"`{sae.folder}`", meta.get("model_name"), meta.get("hook_name")]
        cells += [cfg.get("d_in"), cfg.get("d_sae"), cfg.get("k")]
        cells += [sae.job.metrics.get(m) for m in metrics] + [sae.job.job_id]
        lines.append("| " + " | ".join(cell(c).replace("|", "\\|") for c in cells) + " |")
    first = saes[0].folder
    load = (
        f'SAE.from_pretrained("{target.url.removeprefix("hf://")}", "{first}")'
        if target.url.startswith("hf://")
        else f'SAE.load_from_disk("{first}")  # a folder of this copy'
    )
    lines += [
        "",
        "Each folder holds `cfg.json` and `sae_weights.safetensors` in SAELens' layout; the",
        "activation normalisation is folded into the weights, so an SAE takes raw activations.",
        "",
        "```python",
        "from sae_lens import SAE",
        "",
        f"sae = {load}",
        "```",
    ]
    return "\n".join(lines) + "\n"


def publish_command(
    sweep_id: str,
    to: Annotated[str, typer.Option("--to", help=f"Where to: {SCHEMES}.", show_default=False)],
    force: Annotated[bool, typer.Option(help="Replace what the target holds.")] = False,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="Endpoint of an s3:// target (default: SAEFLEET_STORE_ENDPOINT_URL)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Copy a finished sweep's final SAEs (SAELens layout, README with metrics) to hf://, s3://
    or file://; refuses a target that holds anything unless --force."""
    saes = publish(get_settings(), sweep_id, to, force, endpoint_url)
    folders = {s.folder: s.job.job_id for s in saes}
    if json_out:
        typer.echo(json.dumps({"sweep_id": sweep_id, "to": to, "saes": folders}, indent=2))
        return
    console = terminal()
    console.print(f"published {len(saes)} SAEs of sweep {sweep_id} to {to}", highlight=False)
    for folder, job_id in folders.items():
        console.print(f"  {folder}  ({job_id})", highlight=False, soft_wrap=True)
