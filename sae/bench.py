"""`python -m sae bench`: training-step throughput (activations/s) of our trainer's real step vs a
dense hand-written TopK step, EleutherAI's sparsify and SAELens (when the `bench` extra is
installed), the machine's fp32 matmul rate, a loss-curve check of our sparse step against the
dense one, and LM activation extraction with and without stopping after layer L.

Inputs are random in-memory activations (batch 4,096); timings are the best of `steps` runs.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sae.config import RunConfig, SAEConfig, TrainConfig
from sae.trainer import SAETrainer

SIZES = ((768, 6144, 32), (768, 24576, 64))
QUICK_SIZES = ((64, 512, 8),)
BATCH = 4096


def _best_time(step: Callable[[], Any], steps: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def _interleaved_best(steps_by_name: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best time of each step over `rounds` round-robin rounds (so a busy machine slows all
    implementations alike rather than whichever happened to run during the busy spell)."""
    for step in steps_by_name.values():
        step()  # warm-up
    best = dict.fromkeys(steps_by_name, float("inf"))
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_gflops(d_in: int, d_sae: int, steps: int) -> float:
    """fp32 GFLOP/s of the encoder-shaped matmul (BATCH x d_in @ d_in x d_sae)."""
    a, b = torch.randn(BATCH, d_in), torch.randn(d_in, d_sae)
    return 2 * BATCH * d_in * d_sae / _best_time(lambda: a @ b, steps) / 1e9


def _our_trainer(d_in: int, d_sae: int, k: int, lr: float = 1e-4) -> SAETrainer:
    train = TrainConfig(
        total_tokens=BATCH * 1000,
        batch_tokens=BATCH,
        shuffle_buffer_tokens=BATCH,
        lr=lr,
        warmup_steps=0,
        lr_decay="none",
        max_grad_norm=None,
    )
    return SAETrainer(SAEConfig(n_latents=d_sae, k=k), train, d_in, torch.device("cpu"))


class DenseTopK:
    """A dense hand-written TopK SAE step in plain torch (the textbook implementation)."""

    def __init__(
        self, w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, b_dec: Tensor, k: int, lr: float
    ) -> None:
        self.params = [
            t.detach().clone().requires_grad_(True) for t in (w_enc, b_enc, w_dec, b_dec)
        ]
        self.k = k
        self.optimizer = torch.optim.Adam(self.params, lr=lr)

    def step(self, x: Tensor) -> float:
        w_enc, b_enc, w_dec, b_dec = self.params
        pre = F.relu((x - b_dec) @ w_enc.T + b_enc)
        values, indices = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values)
        error = x - (z @ w_dec + b_dec)
        loss = error.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        loss.backward()
        grad = w_dec.grad
        assert grad is not None
        with torch.no_grad():
            grad -= (grad * w_dec).sum(1, keepdim=True) * w_dec
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
        return loss.item()


def _sparsify_step(d_in: int, d_sae: int, k: int) -> Callable[[Tensor], Any] | str:
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install -e '.[bench]'"
    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device="cpu")
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-4)

    def step(x: Tensor) -> None:
        coder(x, dead_mask=None).fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        coder.set_decoder_norm_to_unit_norm()

    return step


def _sae_lens_step(d_in: int, d_sae: int, k: int) -> Callable[[Tensor], Any] | str:
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except ImportError as exc:
        return f"not installed ({exc.name}): pip install -e '.[bench]'"
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(x: Tensor) -> None:
        inputs = TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        sae.training_forward_pass(inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _bound(step: Callable[[Tensor], Any], x: Tensor) -> Callable[[], Any]:
    return lambda: step(x)


def bench_size(d_in: int, d_sae: int, k: int, steps: int) -> dict[str, Any]:
    """Activations/s of each implementation at one size."""
    x = torch.randn(BATCH, d_in, generator=torch.Generator().manual_seed(0))
    ours = _our_trainer(d_in, d_sae, k)
    ours.init_from_data(x)
    sae = ours.sae
    dense = DenseTopK(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k, 1e-4)
    scaled = x * sae.norm_scale
    steps_by_name: dict[str, Callable[[], Any] | str] = {
        "ours": lambda: ours.step(x),
        "dense": lambda: dense.step(scaled),
    }
    for name, make in (("sparsify", _sparsify_step), ("sae_lens", _sae_lens_step)):
        made = make(d_in, d_sae, k)
        steps_by_name[name] = made if isinstance(made, str) else _bound(made, scaled)
    row: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": BATCH}
    runnable = {name: step for name, step in steps_by_name.items() if not isinstance(step, str)}
    row |= {name: step for name, step in steps_by_name.items() if isinstance(step, str)}
    row |= {name: BATCH / seconds for name, seconds in _interleaved_best(runnable, steps).items()}
    for name in ("dense", "sparsify", "sae_lens"):
        if isinstance(row[name], float):
            row[f"ratio_vs_{name}"] = row["ours"] / row[name]
    return row


def loss_curve_match(d_in: int, d_sae: int, k: int, steps: int = 8) -> dict[str, Any]:
    """Our sparse step vs the dense step from the same weights and data: the losses."""
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(BATCH, d_in, generator=g) for _ in range(steps)]
    ours = _our_trainer(d_in, d_sae, k, lr=1e-3)
    ours.init_from_data(data[0])
    sae = ours.sae
    dense = DenseTopK(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k, 1e-3)
    ours_losses = [ours.step(x).loss for x in data]
    dense_losses = [dense.step(x * sae.norm_scale) for x in data]
    diff = max(abs(a - b) / abs(b) for a, b in zip(ours_losses, dense_losses, strict=True))
    return {"ours": ours_losses, "dense": dense_losses, "max_rel_diff": diff}


def extraction_rate(steps: int) -> dict[str, Any]:
    """Tokens/s reading layer 1 of the tiny LM (4 layers), stopping there vs a full forward."""
    from sae.corpus import write_corpus
    from sae.lm import load_lm, residual_after
    from sae.packing import Cursor, iter_contexts
    from sae.tiny_lm import make_tiny_lm

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_lm(Path(tmp) / "lm")
        corpus = write_corpus(Path(tmp) / "corpus.jsonl", 200, 0)
        config = RunConfig.model_validate(
            {"model": str(model), "layer": 1, "dataset": str(corpus), "context_len": 128,
             "sae": {"n_latents": 64}, "train": {"total_tokens": BATCH}}
        )  # fmt: skip
        lm = load_lm(
            config.model, device=torch.device("cpu"), lm_dtype="fp32", token_env="HF_TOKEN"
        )
        contexts = iter_contexts(config, lm.tokenizer, Cursor(), None)
        ids = torch.stack([next(contexts).ids for _ in range(32)])
        stopped = _best_time(lambda: residual_after(lm, 1, ids), steps)
        with torch.no_grad():
            full = _best_time(lambda: lm.model(input_ids=ids, output_hidden_states=True), steps)
    tokens = ids.numel()
    return {
        "model": "tiny Llama (4 layers, d 64), layer 1",
        "tokens_per_s_stopped": tokens / stopped,
        "tokens_per_s_full": tokens / full,
        "speedup": full / stopped,
    }


def run_benchmark(steps: int = 5, quick: bool = False) -> dict[str, Any]:
    """Everything above, as one JSON-serialisable dict."""
    sizes = QUICK_SIZES if quick else SIZES
    return {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cpu",
            "dtype": "fp32",
            "matmul_gflops": matmul_gflops(*sizes[0][:2], steps),
        },
        "sizes": [bench_size(d_in, d_sae, k, steps) for d_in, d_sae, k in sizes],
        "loss_match": loss_curve_match(*sizes[0]),
        "extraction": extraction_rate(steps),
    }


def print_table(results: dict[str, Any]) -> None:
    """Human-readable summary."""
    machine = results["machine"]
    print(f"CPU {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, fp32; "
          f"matmul {machine['matmul_gflops']:.0f} GFLOP/s")  # fmt: skip
    names = ("ours", "dense", "sparsify", "sae_lens")
    print(f"{'d_in':>5} {'d_sae':>6} {'k':>3} " + " ".join(f"{n + ' act/s':>16}" for n in names))
    for row in results["sizes"]:
        cells = [
            f"{row[n]:>16,.0f}" if isinstance(row[n], float) else f"{'n/a':>16}" for n in names
        ]
        print(f"{row['d_in']:>5} {row['d_sae']:>6} {row['k']:>3} " + " ".join(cells))
        ratios = ", ".join(
            f"{key} {value:.2f}x" for key, value in row.items() if key.startswith("ratio")
        )
        print(f"{'':17}{ratios}")
    match = results["loss_match"]
    print(f"loss curve ours vs dense over {len(match['ours'])} steps: max relative difference "
          f"{match['max_rel_diff']:.2e}")  # fmt: skip
    ex = results["extraction"]
    print(f"extraction ({ex['model']}): {ex['tokens_per_s_stopped']:,.0f} tok/s stopped after the "
          f"layer vs {ex['tokens_per_s_full']:,.0f} full ({ex['speedup']:.2f}x)")  # fmt: skip
