"""The optimisation half of training: one SAE, its Adam optimiser and LR schedule, gradient
accumulation and clipping, the unit-norm decoder constraint, dead-latent bookkeeping, and a
state dict that captures all of it. It sees batches of activations, never the LM or the data.

`SAETrainer.step` is the training step the benchmark measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sae.config import SAEConfig, TrainConfig
from sae.model import ForwardOutput, SparseAutoencoder


@dataclass
class StepStats:
    """Scalars from one optimiser step."""

    loss: float
    fvu: float
    aux_loss: float
    l0: float
    lr: float
    grad_norm: float
    dead_fraction: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of train.lr at optimiser step `step`: warm-up, plateau, then decay."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    total = train.total_steps
    decay_start = max(int(train.decay_start_frac * total), train.warmup_steps)
    if train.lr_decay == "none" or step < decay_start or total <= decay_start:
        return 1.0
    progress = min((step - decay_start) / (total - decay_start), 1.0)
    end = train.lr_end_frac
    if train.lr_decay == "linear":
        return 1.0 - (1.0 - end) * progress
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SAETrainer:
    """Trains one SparseAutoencoder on batches of raw activations."""

    def __init__(
        self, sae_cfg: SAEConfig, train: TrainConfig, d_in: int, device: torch.device
    ) -> None:
        self.sae_cfg, self.train_cfg, self.device = sae_cfg, train, device
        generator = torch.Generator().manual_seed(train.seed)
        self.sae = SparseAutoencoder(
            d_in, sae_cfg.d_sae(d_in), sae_cfg.kind, sae_cfg.k, generator=generator
        ).to(device)
        on_cuda = device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(),
            lr=train.lr,
            betas=train.adam_betas,
            eps=train.adam_eps,
            fused=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, train)
        )
        self.step_count = 0
        self.tokens = 0
        self.tokens_since_fired = torch.zeros(self.sae.d_sae, dtype=torch.int64, device=device)
        self._autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if on_cuda and train.dtype == "bf16"
            else nullcontext()
        )
        self._forward: Callable[..., ForwardOutput] = (
            torch.compile(self.sae) if on_cuda and train.compile else self.sae
        )

    @property
    def dead_mask(self) -> Tensor:
        """Latents silent for sae.dead_after_tokens training tokens."""
        return self.tokens_since_fired >= self.sae_cfg.dead_after_tokens

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        """Set the normalisation scale and b_dec (the mean) from a sample of raw activations."""
        sample = sample.to(self.device, torch.float32)
        if self.sae_cfg.normalize_activations:
            self.sae.norm_scale.fill_(sample.pow(2).sum(-1).mean().rsqrt())
        self.sae.b_dec.copy_(sample.mean(0) * self.sae.norm_scale)

    def step(self, batch: Tensor) -> StepStats:
        """One optimiser step on `batch` (batch_tokens, d_in), in grad_accum_steps pieces."""
        batch = batch.to(self.device, torch.float32)
        pieces = batch.chunk(self.train_cfg.grad_accum_steps)
        scaled = batch * self.sae.norm_scale
        total_variance = (scaled - scaled.mean(0)).pow(2).sum()
        aux_k = (self.sae_cfg.aux_k or 0) if self.sae_cfg.kind == "topk" else 0
        dead = self.dead_mask if aux_k else None
        totals = torch.zeros(4, device=self.device)
        fired = torch.zeros(self.sae.d_sae, dtype=torch.bool, device=self.device)
        for piece in pieces:
            share = len(piece) / len(batch)
            with self._autocast:
                out = self._forward(piece, dead, aux_k, total_variance)
                loss = out.fvu + self.sae_cfg.aux_k_coef * out.aux_loss
                if self.sae_cfg.kind == "relu":
                    loss = loss + self.sae_cfg.l1_coef * out.l1 * share
            loss.backward()
            totals += torch.stack([loss, out.fvu, out.aux_loss, out.l0 * share]).detach().float()
            fired |= self.sae.fired(out)
        self.sae.remove_parallel_grads()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.sae.parameters(), self.train_cfg.max_grad_norm or math.inf
        )
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.sae.normalize_decoder()
        self.tokens_since_fired += batch.shape[0]
        self.tokens_since_fired[fired] = 0
        self.step_count += 1
        self.tokens += batch.shape[0]
        loss_, fvu, aux, l0 = totals.tolist()
        return StepStats(
            loss=loss_,
            fvu=fvu,
            aux_loss=aux,
            l0=l0,
            lr=lr,
            grad_norm=float(grad_norm),
            dead_fraction=float(self.dead_mask.float().mean()),
        )

    @torch.no_grad()
    def evaluate(self, acts: Tensor, chunk_tokens: int = 4096) -> dict[str, float]:
        """FVU and L0 of the current SAE on held-out raw activations (no training)."""
        error = variance = l0 = 0.0
        mean = acts.float().mean(0).to(self.device) * self.sae.norm_scale
        for chunk in acts.split(chunk_tokens):
            piece = chunk.to(self.device, torch.float32)
            with self._autocast:
                out = self.sae(piece)
            scaled = piece * self.sae.norm_scale
            error += float((scaled - out.x_hat.float() * self.sae.norm_scale).pow(2).sum())
            variance += float((scaled - mean).pow(2).sum())
            l0 += float(out.l0) * piece.shape[0]
        return {"fvu": error / variance, "l0": l0 / acts.shape[0]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "tokens": self.tokens,
            "tokens_since_fired": self.tokens_since_fired,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        self.tokens = int(state["tokens"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
