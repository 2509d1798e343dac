"""The sparse autoencoder: TopK (Gao et al. 2024, with AuxK for dead latents) or ReLU + L1.

x is scaled by `norm_scale` (unit mean squared norm when normalisation is on), the pre-encoder
bias b_dec is subtracted, latents z = act(W_enc x' + b_enc), and x̂ = (W_dec z + b_dec) / norm_scale.
Decoder rows stay unit-norm: the trainer removes the gradient component along each row and
renormalises after every step. The decoder starts as the encoder's transpose.

Losses are scale-free: FVU = ||x - x̂||² / ||x - mean(x)||² over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae.kernels import sparse_decode, topk_encode


@dataclass
class ForwardOutput:
    """What one forward pass of the SAE returns (in normalised units, except x_hat)."""

    x_hat: Tensor
    fvu: Tensor
    aux_loss: Tensor
    l1: Tensor
    l0: Tensor
    indices: Tensor | None
    """(tokens, k) latents that fired (topk); None for relu."""
    acts: Tensor | None
    """(tokens, d_sae) latent activations (relu); None for topk."""


class SparseAutoencoder(nn.Module):
    """A TopK or ReLU sparse autoencoder on d_in-wide activations."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        kind: Literal["topk", "relu"] = "topk",
        k: int = 32,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.kind, self.k = d_in, d_sae, kind, k
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("norm_scale", torch.ones(()))
        self.norm_scale: Tensor

    def forward(
        self,
        x: Tensor,
        dead: Tensor | None = None,
        aux_k: int = 0,
        total_variance: Tensor | None = None,
    ) -> ForwardOutput:
        """Reconstruct raw activations x (tokens, d_in); AuxK uses the `dead` latent mask.
        `total_variance` (normalised units) divides the errors; by default x's own."""
        x = x * self.norm_scale
        if total_variance is None:
            total_variance = (x - x.mean(0)).pow(2).sum()
        zero = x.new_zeros(())
        if self.kind == "topk":
            n_dead = int(dead.sum()) if dead is not None else 0
            aux = min(aux_k, n_dead)
            values, indices, aux_values, aux_indices = topk_encode(
                x, self.W_enc, self.b_enc, self.b_dec, self.k, dead if aux else None, aux
            )
            x_hat = sparse_decode(indices, values, self.W_dec) + self.b_dec
            error = x - x_hat
            aux_loss = zero
            if aux:
                e_hat = sparse_decode(aux_indices, aux_values, self.W_dec)
                scale = min(n_dead / aux_k, 1.0)
                aux_loss = scale * (e_hat - error.detach()).pow(2).sum() / total_variance
            l0 = (values > 0).sum(-1).float().mean()
            return ForwardOutput(
                x_hat=x_hat / self.norm_scale,
                fvu=error.pow(2).sum() / total_variance,
                aux_loss=aux_loss,
                l1=zero,
                l0=l0,
                indices=indices.masked_fill(values <= 0, -1),
                acts=None,
            )
        acts = F.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))
        x_hat = acts @ self.W_dec + self.b_dec
        return ForwardOutput(
            x_hat=x_hat / self.norm_scale,
            fvu=(x - x_hat).pow(2).sum() / total_variance,
            aux_loss=zero,
            l1=acts.sum(-1).mean(),
            l0=(acts > 0).sum(-1).float().mean(),
            indices=None,
            acts=acts,
        )

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Dense (tokens, d_sae) latent activations of raw activations x."""
        pre = F.linear(x * self.norm_scale - self.b_dec, self.W_enc, self.b_enc)
        if self.kind == "relu":
            return pre.relu_()
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu_())

    @torch.no_grad()
    def fired(self, out: ForwardOutput) -> Tensor:
        """Boolean (d_sae,) mask of latents active on any token of a forward pass."""
        mask = torch.zeros(self.d_sae, dtype=torch.bool, device=self.W_dec.device)
        if out.indices is not None:
            active = out.indices[out.indices >= 0]
            mask[active] = True
        else:
            assert out.acts is not None
            mask |= (out.acts > 0).any(0)
        return mask

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the gradient component along each (unit) decoder row, so steps keep its norm."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec

    @torch.no_grad()
    def folded_state(self) -> dict[str, Tensor]:
        """Weights with norm_scale folded in, in SAELens layout (W_enc is d_in x d_sae): the
        exported SAE takes and returns raw activations."""
        scale = self.norm_scale
        return {
            "W_enc": (self.W_enc * scale).T.contiguous(),
            "b_enc": self.b_enc.clone(),
            "W_dec": (self.W_dec / scale).contiguous(),
            "b_dec": self.b_dec / scale,
        }

    @classmethod
    def from_folded(
        cls, state: dict[str, Tensor], kind: Literal["topk", "relu"], k: int
    ) -> SparseAutoencoder:
        """Rebuild from `folded_state` tensors (norm_scale 1)."""
        d_in, d_sae = state["W_enc"].shape
        sae = cls(d_in, d_sae, kind, k)
        with torch.no_grad():
            sae.W_enc.copy_(state["W_enc"].T)
            sae.b_enc.copy_(state["b_enc"])
            sae.W_dec.copy_(state["W_dec"])
            sae.b_dec.copy_(state["b_dec"])
        return sae
