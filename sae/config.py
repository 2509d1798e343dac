"""Typed configuration of one SAE training run (imports no torch, so the control plane can
validate sweep files with it).

`RunConfig` is what `python -m sae train --config` reads and what each fleet job carries. Every
field has a default except `model`, `layer`, `dataset`, `sae` (its size) and
`train.total_tokens`, so a tiny job fits in a few lines of YAML. Combinations that cannot work
are rejected here with a message naming the fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_MAX = 2**63 - 1


class _Strict(BaseModel):
    """Unknown fields, infinities, NaN and integers beyond 64 bits are refused here, at the
    edge: torch would fail on them later (seeds, sizes), on a rented GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise ValueError("must fit in 64 bits (at most 2**63 - 1)")
        return value


class SAEConfig(_Strict):
    """Architecture of the sparse autoencoder."""

    kind: Literal["topk", "relu"] = Field("topk", description="TopK (+AuxK) or ReLU with L1.")
    n_latents: int | None = Field(None, gt=0, description="Dictionary size (d_sae).")
    expansion_factor: int | None = Field(
        None, gt=0, description="d_sae = expansion_factor * d_in (when n_latents is not set)."
    )
    k: int = Field(32, gt=0, description="Active latents per token (topk only).")
    aux_k: int | None = Field(
        512,
        gt=0,
        description="Most dead latents AuxK asks to explain the residual (topk; null: off).",
    )
    aux_k_coef: float = Field(1 / 32, ge=0, description="Weight of the AuxK loss (topk).")
    dead_after_tokens: int = Field(
        10_000_000, gt=0, description="A latent silent for this many training tokens is dead."
    )
    l1_coef: float = Field(0.02, ge=0, description="L1 penalty on latent activations (relu only).")
    normalize_activations: bool = Field(
        True,
        description="Scale inputs to unit mean squared norm; the scale is folded into the "
        "exported weights so the saved SAE takes raw activations.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.n_latents is None) == (self.expansion_factor is None):
            raise ValueError("set exactly one of sae.n_latents and sae.expansion_factor")
        wrong_kind = ("l1_coef",) if self.kind == "topk" else ("k", "aux_k", "aux_k_coef")
        changed = [
            f"sae.{name}"
            for name in wrong_kind
            if getattr(self, name) != type(self).model_fields[name].default
        ]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} do not apply to sae.kind {self.kind!r}"
                " (k, aux_k, aux_k_coef are for 'topk'; l1_coef is for 'relu')"
            )
        if self.n_latents is not None and self.kind == "topk" and self.k > self.n_latents:
            raise ValueError(f"sae.k ({self.k}) must not exceed sae.n_latents ({self.n_latents})")
        return self

    def d_sae(self, d_in: int) -> int:
        """Dictionary size for an input of width d_in."""
        if self.n_latents is not None:
            return self.n_latents
        assert self.expansion_factor is not None
        return self.expansion_factor * d_in


class TrainConfig(_Strict):
    """Optimisation, data buffering and checkpoint cadence."""

    total_tokens: int = Field(..., gt=0, description="Activation tokens to train on.")
    batch_tokens: int = Field(4096, gt=0, description="Tokens per optimiser step.")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimiser step (each batch_tokens / this)."
    )
    lr: float = Field(2e-4, gt=0, description="Peak Adam learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps from 0 to lr.")
    lr_decay: Literal["linear", "cosine", "none"] = Field(
        "linear", description="Shape of the decay after decay_start_frac of the steps."
    )
    decay_start_frac: float = Field(
        0.8, ge=0, le=1, description="Fraction of total steps at which the decay starts."
    )
    lr_end_frac: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of lr.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam (beta1, beta2).")
    adam_eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this (null: no clipping)."
    )
    dtype: Literal["fp32", "bf16"] = Field(
        "bf16", description="Autocast dtype on CUDA; CPU always trains in fp32."
    )
    compile: bool = Field(False, description="torch.compile the SAE step (CUDA only).")
    lm_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Dtype the LM is loaded in (auto: bf16 on CUDA, fp32 on CPU)."
    )
    lm_batch_size: int = Field(8, gt=0, description="Contexts per LM forward pass.")
    shuffle_buffer_tokens: int = Field(
        65_536, gt=0, description="Activations gathered and shuffled before training on them."
    )
    seed: int = Field(0, description="Seed for initialisation and data order.")
    checkpoint_every_tokens: int | None = Field(
        None, gt=0, description="Also checkpoint every N tokens within a segment."
    )
    checkpoint_every_minutes: float | None = Field(
        None, gt=0, description="Also checkpoint every N minutes within a segment."
    )
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept on disk (newest).")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ValueError(f"train.adam_betas {self.adam_betas} must each be in [0, 1)")
        if self.batch_tokens % self.grad_accum_steps:
            raise ValueError(
                f"train.batch_tokens ({self.batch_tokens}) must be a multiple of "
                f"train.grad_accum_steps ({self.grad_accum_steps})"
            )
        if self.shuffle_buffer_tokens < self.batch_tokens:
            raise ValueError(
                f"train.shuffle_buffer_tokens ({self.shuffle_buffer_tokens}) must hold at least "
                f"one batch (train.batch_tokens = {self.batch_tokens})"
            )
        if self.total_tokens < self.batch_tokens:
            raise ValueError(
                f"train.total_tokens ({self.total_tokens}) is less than one step "
                f"(train.batch_tokens = {self.batch_tokens})"
            )
        return self

    @property
    def micro_batch_tokens(self) -> int:
        """Tokens per forward/backward pass."""
        return self.batch_tokens // self.grad_accum_steps

    @property
    def total_steps(self) -> int:
        """Optimiser steps the run takes when nothing stops it early."""
        return -(-self.total_tokens // self.batch_tokens)


class EarlyStopConfig(_Strict):
    """Stop on a plateau of the validation loss (the seed's "min 2 epochs, patience 3, 1%":
    min_tokens = two passes' worth of tokens, patience 3, min_rel_delta 0.01)."""

    enabled: bool = Field(True, description="Turn plateau stopping on or off.")
    min_tokens: int = Field(0, ge=0, description="Never stop before this many tokens.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_rel_delta: float = Field(0.01, ge=0, description="Relative improvement that counts.")
    eval_every_tokens: int = Field(
        1_000_000, gt=0, description="Training tokens between two validation evaluations."
    )
    val_tokens: int = Field(
        8192, gt=0, description="Held-out tokens the validation loss is measured on."
    )


class EvalConfig(_Strict):
    """The final evaluation on held-out data (and `python -m sae eval`)."""

    holdout_tokens: int = Field(
        65_536,
        gt=0,
        description="Tokens at the head of the stream never trained on; validation and the "
        "final evals use them.",
    )
    probe_top_latents: int = Field(
        16, gt=0, description="Latents the sparse linear PII probe may use, per PII type."
    )
    probe_test_frac: float = Field(
        0.5, gt=0, lt=1, description="Share of held-out contexts the probe is scored on."
    )


class RunConfig(_Strict):
    """Everything one training run needs: where activations come from and how to train."""

    model: str = Field(..., min_length=1, description="Causal LM: hub id or local path.")
    layer: int = Field(..., ge=0, description="Residual stream after this decoder layer.")
    dataset: str = Field(..., min_length=1, description="Hub id or local JSON/JSONL/parquet.")
    dataset_split: str = Field("train", description="Split to stream.")
    text_field: str | None = Field(
        None, description="Column holding text or a conversation (auto-detected when unset)."
    )
    pii_only: bool = Field(False, description="Keep only rows the PII tagger flags.")
    context_len: int = Field(128, gt=1, description="Tokens per packed context (BOS included).")
    hf_token_env: str = Field(
        "HF_TOKEN", description="Name of the environment variable holding a Hugging Face token."
    )
    sae: SAEConfig
    train: TrainConfig
    early_stop: EarlyStopConfig = EarlyStopConfig()
    evals: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        stop = self.early_stop
        if stop.enabled and stop.min_tokens > self.train.total_tokens:
            raise ValueError(
                f"early_stop.min_tokens ({stop.min_tokens}) exceeds train.total_tokens "
                f"({self.train.total_tokens}): early stopping could never fire"
            )
        if stop.val_tokens > self.evals.holdout_tokens:
            raise ValueError(
                f"early_stop.val_tokens ({stop.val_tokens}) must not exceed "
                f"evals.holdout_tokens ({self.evals.holdout_tokens})"
            )
        return self


def load_run_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from YAML (pydantic's ValidationError names any bad field)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return RunConfig.model_validate(raw)
