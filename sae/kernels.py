"""Sparse autograd kernels for the TopK SAE: only the k active latents of each token are touched
in the backward pass of the encoder and in both passes of the decoder.

- `topk_encode`: pre = (x - b_dec) W_encᵀ + b_enc (one dense matmul), top-k per token, ReLU,
  and optionally the top-`aux_k` among dead latents (AuxK). Backward: grad W_enc = Gᵀ (x - b_dec)
  with G the (tokens x latents) sparse gradient, as one CSR x dense product (CPU) or a scatter-add
  (CUDA); grad b_enc and grad b_dec through per-latent sums, never a dense (tokens x latents) array.
- `sparse_decode`: x̂ = Σ_k z_k W_dec[i_k] with `embedding_bag`, whose backward is sparse too.

The results equal the dense computation up to float summation order.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

_INDEX_ADD_CHUNK = 1 << 27
"""Most (token, slot, feature) products the index_add path holds at once (512 MiB in fp32)."""


def scatter_rows(
    indices: Tensor,
    weights: Tensor,
    inputs: Tensor,
    n_rows: int,
    method: Literal["csr", "index_add"] | None = None,
) -> Tensor:
    """out[j] = Σ_{b,s: indices[b,s]=j} weights[b,s] * inputs[b]: a (n_rows, d) gradient.

    "csr" (the CPU default): a CSR (n_rows x tokens) times dense product (MKL).
    "index_add" (the CUDA default): index_add of the per-entry products.
    """
    tokens, k = indices.shape
    flat = indices.reshape(-1)
    method = method or ("index_add" if inputs.device.type == "cuda" else "csr")
    if method == "index_add":
        out = inputs.new_zeros(n_rows, inputs.shape[1])
        rows_per_chunk = max(1, _INDEX_ADD_CHUNK // (k * inputs.shape[1]))
        for start in range(0, tokens, rows_per_chunk):
            part = slice(start, start + rows_per_chunk)
            products = weights[part].unsqueeze(2) * inputs[part].unsqueeze(1)
            out.index_add_(0, indices[part].reshape(-1), products.reshape(-1, inputs.shape[1]))
        return out
    order = flat.int().argsort(stable=True)  # int32: a much faster stable sort than int64
    columns = torch.arange(tokens, device=inputs.device).repeat_interleave(k)[order]
    counts = torch.bincount(flat, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=inputs.device)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow,
            columns,
            weights.reshape(-1)[order].to(inputs.dtype),
            size=(n_rows, tokens),
            check_invariants=False,
        )
    return matrix @ inputs


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        k: int,
        dead: Tensor | None,
        aux_k: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        centred = x - b_dec
        # top-k of the pre-activations, then ReLU on the k values: the same latents and values
        # as ReLU-then-top-k, without a pass over the whole (tokens x latents) array
        pre = F.linear(centred, w_enc, b_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu_()
        if dead is not None and aux_k > 0:
            dead_ids = dead.nonzero().squeeze(1)
            aux_values, aux_local = pre.index_select(1, dead_ids).topk(aux_k, dim=-1, sorted=False)
            aux_values = aux_values.relu_()
            aux_indices = dead_ids[aux_local]
        else:
            aux_values = pre.new_zeros(x.shape[0], 0)
            aux_indices = indices.new_zeros(x.shape[0], 0)
        ctx.save_for_backward(centred, w_enc, indices, aux_indices, values > 0, aux_values > 0)
        ctx.n_latents = w_enc.shape[0]
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(
        ctx: Any, grad_values: Tensor, _gi: Tensor, grad_aux: Tensor, _ga: Tensor
    ) -> tuple[Tensor | None, ...]:
        centred, w_enc, indices, aux_indices, positive, aux_positive = ctx.saved_tensors
        if aux_indices.shape[1]:
            indices = torch.cat([indices, aux_indices], dim=1)
            grad_values = torch.cat([grad_values, grad_aux], dim=1)
            positive = torch.cat([positive, aux_positive], dim=1)
        grad_values = (grad_values * positive).to(w_enc.dtype)  # ReLU: no gradient at 0
        per_latent = torch.zeros(ctx.n_latents, dtype=w_enc.dtype, device=w_enc.device)
        per_latent.index_add_(0, indices.reshape(-1), grad_values.reshape(-1))
        grad_w = scatter_rows(indices, grad_values, centred.to(w_enc.dtype), ctx.n_latents)
        grad_b_dec = -(per_latent @ w_enc)
        return None, grad_w, per_latent, grad_b_dec, None, None, None


def topk_encode(
    x: Tensor,
    w_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    k: int,
    dead: Tensor | None = None,
    aux_k: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(values, indices) of the top-k ReLU latents per token and (aux_values, aux_indices) of the
    top-`aux_k` dead latents (empty when `dead` is None). No gradient flows to `x`."""
    result: tuple[Tensor, Tensor, Tensor, Tensor] = _TopKEncode.apply(
        x, w_enc, b_enc, b_dec, k, dead, aux_k
    )
    return result


def sparse_decode(indices: Tensor, values: Tensor, w_dec: Tensor) -> Tensor:
    """Σ_s values[b, s] * w_dec[indices[b, s]] for each token b (no decoder bias).

    `embedding_bag`'s own backward already touches only the gathered rows (grad W_dec by
    scatter-add, grad values by row-wise dot products), so autograd handles it."""
    return F.embedding_bag(  # int32 indices: its backward sorts them, much faster than int64
        indices.int(), w_dec, per_sample_weights=values.to(w_dec.dtype), mode="sum"
    )
