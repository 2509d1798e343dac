"""The finished SAE on disk, in SAELens' layout: `sae.safetensors` (W_enc d_in x d_sae, b_enc,
W_dec d_sae x d_in, b_dec, normalisation folded in so it takes raw activations), `cfg.json`
(architecture, d_in, d_sae, k, hook point, normalisation) and our `metrics.json` + PNG plots.
The directory is written under a temp name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file, save_file

from sae.atomic_files import write_atomic
from sae.config import RunConfig
from sae.model import SparseAutoencoder

WEIGHTS = "sae.safetensors"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
"""The name SAELens' `SAE.load_from_disk` opens: a hard link to WEIGHTS (no second copy)."""
CFG = "cfg.json"
METRICS = "metrics.json"
SAE_LENS_VERSION = "6.54.12"


def sae_lens_cfg(sae: SparseAutoencoder, config: RunConfig, norm_scale: float) -> dict[str, Any]:
    """cfg.json contents SAELens' `SAE.load_from_disk` reads (extra keys go in metadata)."""
    cfg: dict[str, Any] = {
        "architecture": "topk" if sae.kind == "topk" else "standard",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_VERSION,
            "model_name": config.model,
            "hook_name": f"blocks.{config.layer}.hook_resid_post",
            "hf_hook_point": f"model.layers.{config.layer}",
            "hook_layer": config.layer,
            "context_size": config.context_len,
            "prepend_bos": True,
            "dataset_path": config.dataset,
            "activation_norm_scale": norm_scale,
            "activation_norm_folded": True,
            "trained_with": "saefleet",
        },
    }
    if sae.kind == "topk":
        cfg["k"] = sae.k
    return cfg


def write_final(
    final_dir: Path, sae: SparseAutoencoder, config: RunConfig, metrics: dict[str, Any]
) -> Path:
    """Write the final SAE, its cfg.json, metrics.json and plots into `final_dir` atomically."""
    temp = final_dir.with_name(f".tmp-{final_dir.name}-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    save_file({k: v.cpu() for k, v in sae.folded_state().items()}, str(temp / WEIGHTS))
    try:
        os.link(temp / WEIGHTS, temp / SAE_LENS_WEIGHTS)
    except OSError:
        shutil.copyfile(temp / WEIGHTS, temp / SAE_LENS_WEIGHTS)
    cfg = sae_lens_cfg(sae, config, float(sae.norm_scale))
    (temp / CFG).write_text(json.dumps(cfg, indent=2))
    (temp / METRICS).write_text(json.dumps(metrics, indent=2))
    if metrics.get("history"):
        # matplotlib costs a second of CPU to import: only a finished run pays it, not every
        # trainer start (a resumed attempt's first step waits for those imports)
        from sae.plots import plot_training

        plot_training(metrics["history"], metrics.get("validation", []), temp / "training.png")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(temp, final_dir)
    return final_dir


def load_sae(sae_dir: Path) -> SparseAutoencoder:
    """The SAE saved by `write_final` (weights already take raw activations)."""
    cfg = json.loads((sae_dir / CFG).read_text())
    kind: Literal["topk", "relu"] = "topk" if cfg["architecture"] == "topk" else "relu"
    return SparseAutoencoder.from_folded(
        load_file(str(sae_dir / WEIGHTS)), kind, int(cfg.get("k", 0)) or 1
    )


def update_metrics(sae_dir: Path, **sections: Any) -> dict[str, Any]:
    """Merge `sections` into sae_dir/metrics.json (replaced atomically)."""
    path = sae_dir / METRICS
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.update(sections)
    write_atomic(path, json.dumps(metrics, indent=2))
    return metrics
