"""How fast a job trains on a device (activation tokens per second): the planner's clock.

Method (an estimate, not a benchmark of our trainer on each GPU):

    tokens/s = effective FLOP/s of the device / FLOP per training token

FLOP per token = the LM forward up to the hooked layer, (layer + 1) x (2 x params per decoder
layer + 2 x context_len x attention width), plus the SAE step as sae/model.py computes it:
- topk: the dense encoder forward, 2 x d_in x n_latents, plus the sparse parts (sae/kernels.py)
  over the k active latents, 8 x k x d_in (encoder weight gradient 2, decoder forward 2 and
  backward 4), and AuxK's decode over at most aux_k latents, 6 x aux_k x d_in;
- relu: all dense, 10 x d_in x n_latents (encoder forward and weight gradient, decoder forward,
  weight gradient and input gradient).
Embeddings, norms and the LM head are not counted. Sparse kernels run further below peak than
dense matmuls; the one utilization figure below covers both.

Effective FLOP/s:
- GPUs: NVIDIA's datasheet peak for dense tensor math in the job's dtype (bf16, or plain fp32
  for `dtype: fp32`), times ASSUMED_GPU_UTILIZATION. The 0.30 is an assumption (typical model
  FLOPs utilization for on-the-fly activation generation with ~4k-token batches), not a
  measurement: no GPU was available when this table was written (2026-11-23). Data loading
  (streaming, PII filtering, tokenizing on the instance's CPUs) is not modelled and can be the
  bottleneck for `pii_only` jobs. Replace the utilization with a measured figure when one exists.
- CPU (the local provider): measured on the development machine, 2026-11-23: a 2-core AMD
  EPYC VM, torch 2.13.0 (CPU), fp32, a TopK SAE (64 -> 512 latents, k 16, batch 4096 tokens,
  Adam) trained on layer 1 of a randomly initialised 2-layer Llama (d_model 64, FFN 256, 4
  heads, context 128): median 73,000 tokens/s over 5 runs on an idle machine (59,000-93,000;
  8,000-20,000 while other work ran). That benchmark's SAE was dense (10 x d_in x n_latents),
  622,592 FLOP per token in all: 45 GFLOP/s. Larger models use the CPU more efficiently, so
  local estimates err long.

Model shapes come from KNOWN_MODELS (values from each model's published config.json), a local
model directory's config.json, or a config.json already in the Hugging Face cache; anything
else has no estimate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from queue_app.jobspec import JobConfig
from sae.config import SAEConfig

ASSUMED_GPU_UTILIZATION = 0.30
CPU_EFFECTIVE_FLOPS = 45.4e9
CPU_BASIS = (
    "CPU figure measured on the dev machine (2-core AMD EPYC, tiny LM, 2026-11-23): "
    "45 GFLOP/s effective"
)
_GATED_MLP_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelShape(_Frozen):
    """The parts of a decoder-only LM's architecture that set its compute per token."""

    d_model: int = Field(..., gt=0, description="Residual stream width (the SAE's d_in).")
    n_layers: int = Field(..., gt=0, description="Decoder layers.")
    d_ffn: int = Field(..., gt=0, description="MLP hidden width.")
    n_heads: int = Field(..., gt=0, description="Query heads.")
    n_kv_heads: int = Field(..., gt=0, description="Key/value heads (GQA).")
    head_dim: int = Field(..., gt=0, description="Width of one head.")
    gated_mlp: bool = Field(..., description="Three MLP matrices (SwiGLU) instead of two.")

    def params_per_layer(self) -> int:
        attention = 2 * self.d_model * self.n_heads * self.head_dim
        attention += 2 * self.d_model * self.n_kv_heads * self.head_dim
        return attention + (3 if self.gated_mlp else 2) * self.d_model * self.d_ffn


_LLAMA_31_8B = ModelShape(
    d_model=4096, n_layers=32, d_ffn=14336, n_heads=32, n_kv_heads=8, head_dim=128, gated_mlp=True
)
KNOWN_MODELS: dict[str, ModelShape] = {
    "meta-llama/Llama-3.1-8B": _LLAMA_31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_31_8B,
    "meta-llama/Llama-3.2-1B": ModelShape(
        d_model=2048, n_layers=16, d_ffn=8192, n_heads=32, n_kv_heads=8, head_dim=64, gated_mlp=True
    ),
    "gpt2": ModelShape(
        d_model=768,
        n_layers=12,
        d_ffn=3072,
        n_heads=12,
        n_kv_heads=12,
        head_dim=64,
        gated_mlp=False,
    ),
}


class Device(_Frozen):
    """Peak dense tensor throughput of one accelerator (NVIDIA datasheets)."""

    name: str
    bf16_tflops: float | None = Field(..., description="None: no native bf16.")
    fp32_tflops: float


def _gpu(
    pattern: str, name: str, bf16: float | None, fp32: float
) -> tuple[re.Pattern[str], Device]:
    return re.compile(pattern, re.IGNORECASE), Device(name=name, bf16_tflops=bf16, fp32_tflops=fp32)


# Matched against an instance type's GPU description, first match wins.
GPUS: list[tuple[re.Pattern[str], Device]] = [
    _gpu(r"\bGH200\b", "GH200", 989, 67),
    _gpu(r"\bH200\b", "H200", 989, 67),
    _gpu(r"\bH100\b.*PCIe", "H100 PCIe", 756, 51),
    _gpu(r"\bH100\b", "H100 SXM", 989, 67),
    _gpu(r"\bA100\b", "A100", 312, 19.5),
    _gpu(r"\bA6000\b", "RTX A6000", 154.8, 38.7),
    _gpu(r"\bA10\b", "A10", 125, 31.2),
    _gpu(r"\bL40S\b", "L40S", 362, 91.6),
    _gpu(r"\bL4\b", "L4", 121, 30.3),
    _gpu(r"\bV100\b", "V100", None, 15.7),
]


class Throughput(_Frozen):
    """Estimated training speed of one job on one device, and how it was arrived at."""

    tokens_per_s: float
    flops_per_token: float
    basis: str


def gpu_device(description: str) -> Device | None:
    """The GPU named in an instance type's description, if this table knows it."""
    return next((device for pattern, device in GPUS if pattern.search(description)), None)


def flops_per_token(config: JobConfig, shape: ModelShape) -> float:
    """Training FLOP per activation token (see the module docstring)."""
    return lm_flops_per_token(config, shape) + sae_flops_per_token(config.sae, shape.d_model)


def lm_flops_per_token(config: JobConfig, shape: ModelShape) -> float:
    """The LM forward's FLOP per token up to the hooked layer (see the module docstring)."""
    layers = min(config.layer, shape.n_layers - 1) + 1
    attention = 2 * config.context_len * shape.n_heads * shape.head_dim
    return float(layers * (2 * shape.params_per_layer() + attention))


def sae_flops_per_token(sae: SAEConfig, d_in: int) -> float:
    """One SAE training step's FLOP per token (see the module docstring)."""
    n_latents = sae.d_sae(d_in)
    if sae.kind == "relu":
        return 10.0 * d_in * n_latents
    return 2.0 * d_in * n_latents + 8.0 * sae.k * d_in + 6.0 * (sae.aux_k or 0) * d_in


def estimate(config: JobConfig, shape: ModelShape, device: Device | None) -> Throughput | None:
    """Tokens/s of `config` on `device` (None: the CPU); None when the GPU cannot run it."""
    flops = flops_per_token(config, shape)
    if device is None:
        return Throughput(
            tokens_per_s=CPU_EFFECTIVE_FLOPS / flops, flops_per_token=flops, basis=CPU_BASIS
        )
    peak = device.bf16_tflops if config.train.dtype == "bf16" else device.fp32_tflops
    if peak is None:
        return None
    effective = peak * 1e12 * ASSUMED_GPU_UTILIZATION
    basis = (
        f"estimated: {device.name} {config.train.dtype} peak {peak:g} TFLOPS x "
        f"{ASSUMED_GPU_UTILIZATION:.0%} assumed utilization / {flops / 1e9:.2f} GFLOP per token"
    )
    return Throughput(tokens_per_s=effective / flops, flops_per_token=flops, basis=basis)


def model_shape(model: str) -> ModelShape | None:
    """The shape of `model` (hub id or local path) from the table, its config.json, or the
    Hugging Face cache; None when none of them has it (no network access)."""
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    local = Path(model).expanduser()
    if local.is_dir():
        return shape_from_config(local / "config.json")
    if local.exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return shape_from_config(Path(cached)) if isinstance(cached, str) else None


def shape_from_config(path: Path) -> ModelShape | None:
    """A ModelShape from a transformers config.json (Llama- and GPT-2-style names)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    d_model = raw.get("hidden_size") or raw.get("n_embd") or raw.get("d_model")
    n_layers = raw.get("num_hidden_layers") or raw.get("n_layer")
    n_heads = raw.get("num_attention_heads") or raw.get("n_head")
    if not (isinstance(d_model, int) and isinstance(n_layers, int) and isinstance(n_heads, int)):
        return None
    return ModelShape(
        d_model=d_model,
        n_layers=n_layers,
        d_ffn=raw.get("intermediate_size") or raw.get("n_inner") or 4 * d_model,
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        head_dim=raw.get("head_dim") or d_model // n_heads,
        gated_mlp=raw.get("model_type") in _GATED_MLP_TYPES,
    )
