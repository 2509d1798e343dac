"""`python -m sae bench pack`: what packing saves. A sweep of four TopK SAEs (k = 8, 16, 32, 64)
on an LM made locally (sae.tiny_lm's Llama at a larger size, untrained: weights do not change
timings), large enough that its forward to the hooked layer costs at least one SAE step.

Per batch: F, the LM forward to the hooked layer for one batch's contexts (sae.activations, as
the stream runs it); S_k, one real SAETrainer step for each k; and one batch through the real
trainer (`PackRun.step`, with a shuffle buffer of one batch so every batch pays its own
forward), one job at a time (four PackRuns of one, each its own stream: the sum of their
times) and as one pack of four. Each is the best of `rounds` round-robin rounds after a
warm-up round, so a busy machine slows all alike. The ideal for a pack is F + sum(S_k); the
target is packed <= 1.1 x ideal.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from sae.activations import activations_of
from sae.config import RunConfig
from sae.corpus import write_corpus
from sae.lm import LoadedLM, load_lm
from sae.pack import PackRun
from sae.packing import Cursor, iter_contexts, valid_mask
from sae.tiny_lm import make_tiny_lm
from sae.trainer import SAETrainer

KS = (8, 16, 32, 64)
SEED_JOB_FLOP_PER_TOKEN = {"forward": 5.7e9, "sae_step": 0.3e9}
"""The seed guide's job (Llama 3.1 8B to layer 12, 32,768 latents, k 32, sparse backward),
per token, from issue 14's arithmetic: 2 x 0.22 B parameters x 13 layers; 0.3 GFLOP."""
FULL = {"d_model": 512, "n_layers": 6, "layer": 4, "batch_tokens": 2048}
QUICK = {"d_model": 64, "n_layers": 3, "layer": 1, "batch_tokens": 256}
CONTEXT_LEN = 128


def predicted_speedup(forward: float, sae_step: float, members: int) -> float:
    """One-at-a-time over packed when the forward costs `forward` and each SAE `sae_step`."""
    return members * (forward + sae_step) / (forward + members * sae_step)


def _configs(model: Path, corpus: Path, size: dict[str, int]) -> list[RunConfig]:
    batch = size["batch_tokens"]
    return [
        RunConfig.model_validate(
            {
                "model": str(model),
                "layer": size["layer"],
                "dataset": str(corpus),
                "context_len": CONTEXT_LEN,
                "sae": {"expansion_factor": 8, "k": k, "aux_k": 256},
                "train": {
                    "total_tokens": batch * 1000,
                    "batch_tokens": batch,
                    "shuffle_buffer_tokens": batch,
                    "lm_batch_size": 16,
                    "warmup_steps": 1,
                },
                "early_stop": {"enabled": False, "val_tokens": batch},
                "evals": {"holdout_tokens": batch},
            }
        )
        for k in KS
    ]


def _one_batch_of_contexts(config: RunConfig, lm: LoadedLM) -> torch.Tensor:
    """The contexts the stream reads for its first batch (as many as hold batch_tokens)."""
    contexts = iter_contexts(config, lm.tokenizer, Cursor(), None)
    ids: list[torch.Tensor] = []
    while sum(int(valid_mask(i, lm.tokenizer).sum()) for i in ids) < config.train.batch_tokens:
        ids.append(next(contexts).ids)
    return torch.stack(ids)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_best(
    runs: dict[str, Callable[[], Any]], rounds: int, device: torch.device
) -> dict[str, float]:
    """Best time of each run over `rounds` round-robin rounds after a warm-up round, so a busy
    machine slows every measurement alike."""
    best = dict.fromkeys(runs, float("inf"))
    for round_ in range(rounds + 1):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_pack_benchmark(
    quick: bool = False, rounds: int = 5, device: str | None = None
) -> dict[str, Any]:
    """The measurements above as one JSON-serialisable dict."""
    size = QUICK if quick else FULL
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_tiny_lm(
            root / "lm", hidden_size=size["d_model"], n_layers=size["n_layers"], train_steps=0
        )
        corpus = write_corpus(root / "corpus.jsonl", 400, 0)
        configs = _configs(model, corpus, size)
        first = configs[0]
        lm = load_lm(first.model, device=target, lm_dtype="auto", token_env="HF_TOKEN")
        ids = _one_batch_of_contexts(first, lm)
        layer = [size["layer"]]
        timed: dict[str, Callable[[], Any]] = {
            "forward": partial(activations_of, lm, layer, ids, 16),
            "packed": PackRun(
                configs, [root / "packed" / f"k{c.sae.k}" for c in configs], device=str(target)
            ).step,
        }
        acts = activations_of(lm, layer, ids, 16)[size["layer"]][: size["batch_tokens"]]
        for config in configs:
            trainer = SAETrainer(config.sae, config.train, lm.d_model, target)
            trainer.init_from_data(acts)
            timed[f"step_{config.sae.k}"] = partial(trainer.step, acts)
            alone = PackRun([config], [root / "alone" / f"k{config.sae.k}"], device=str(target))
            timed[f"alone_{config.sae.k}"] = alone.step
        best = _interleaved_best(timed, rounds, target)
    forward, packed = best["forward"], best["packed"]
    steps_s = {k: best[f"step_{k}"] for k in KS}
    alone_s = sum(best[f"alone_{k}"] for k in KS)
    ideal = forward + sum(steps_s.values())
    mean_step = sum(steps_s.values()) / len(steps_s)
    seed = SEED_JOB_FLOP_PER_TOKEN
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(target),
            "gpu": torch.cuda.get_device_name(target) if target.type == "cuda" else None,
        },
        "lm": {k: size[k] for k in ("d_model", "n_layers", "layer")},
        "batch_tokens": size["batch_tokens"],
        "rounds": rounds,
        "forward_s": forward,
        "sae_step_s": {str(k): v for k, v in steps_s.items()},
        "forward_over_mean_step": forward / mean_step,
        "ideal_s": ideal,
        "packed_s": packed,
        "one_at_a_time_s": alone_s,
        "packed_over_ideal": packed / ideal,
        "target_met": packed <= 1.1 * ideal,
        "speedup": alone_s / packed,
        "predicted_speedup_measured_f_s": predicted_speedup(forward, mean_step, len(KS)),
        "predicted_speedup_seed_job": predicted_speedup(seed["forward"], seed["sae_step"], len(KS)),
    }


def print_pack_table(results: dict[str, Any]) -> None:
    """Human-readable summary."""
    m, lm = results["machine"], results["lm"]
    print(f"{m['device']} ({m['gpu'] or m['cpu']}, {m['threads']} threads), torch {m['torch']}; "
          f"LM d_model {lm['d_model']}, {lm['n_layers']} layers, hooked after layer {lm['layer']}; "
          f"batch {results['batch_tokens']} tokens, best of {results['rounds']}")  # fmt: skip
    steps = ", ".join(f"k{k} {s * 1e3:.1f}" for k, s in results["sae_step_s"].items())
    print(f"F {results['forward_s'] * 1e3:.1f} ms; S {steps} ms; "
          f"F / mean S {results['forward_over_mean_step']:.2f}")  # fmt: skip
    header = ("ideal F+4S", "packed", "one-at-a-time", "speedup", "packed/ideal")
    widths = (12, 10, 14, 8, 13)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    print(f"{results['ideal_s'] * 1e3:>10.1f}ms {results['packed_s'] * 1e3:>8.1f}ms "
          f"{results['one_at_a_time_s'] * 1e3:>12.1f}ms {results['speedup']:>7.2f}x "
          f"{results['packed_over_ideal']:>12.2f}x")  # fmt: skip
    print(f"predicted speedup from the measured F and S: "
          f"{results['predicted_speedup_measured_f_s']:.2f}x; for the seed guide's job "
          f"(FLOP counts): {results['predicted_speedup_seed_job']:.2f}x")  # fmt: skip
