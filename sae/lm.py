"""The language model side: load any `transformers` causal LM + tokenizer (hub id or local
path, `trust_remote_code` off) once per process, read the residual stream after decoder layer L
with the forward stopped right there, and splice a replacement into that stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from sae.errors import ConfigError, ModelLoadError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedLM:
    """A causal LM ready for activation reads."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    layers: nn.ModuleList
    device: torch.device

    @property
    def d_model(self) -> int:
        config: Any = self.model.config
        return int(config.hidden_size)

    def check_layer(self, layer: int) -> None:
        if layer >= len(self.layers):
            raise ConfigError(
                f"layer {layer} is out of range: {self.name} has {len(self.layers)} decoder "
                f"layers (0..{len(self.layers) - 1})"
            )


_CACHE: dict[tuple[str, str, str], LoadedLM] = {}


def load_lm(name: str, *, device: torch.device, lm_dtype: str, token_env: str) -> LoadedLM:
    """The LM and tokenizer for `name`, loaded once per process (a new name evicts the old)."""
    dtype = _DTYPES.get(lm_dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    key = (name, str(device), str(dtype))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _load(name, device, dtype, token_env)
    return _CACHE[key]


def _load(name: str, device: torch.device, dtype: torch.dtype, token_env: str) -> LoadedLM:
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise ModelLoadError(f"model {name!r}: no such local directory")
    token = os.environ.get(token_env) or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, token=token, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, token=token, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise _load_error(name, token_env, token, exc) from exc
    model.to(device)
    model.eval().requires_grad_(False)
    return LoadedLM(name, model, tokenizer, find_decoder_layers(model), device)


def _load_error(name: str, token_env: str, token: str | None, exc: Exception) -> ModelLoadError:
    text = str(exc)
    if "gated" in text.lower() or "401" in text or "403" in text:
        hint = "is not set" if token is None else "holds a token without access"
        return ModelLoadError(
            f"model {name!r} is gated on the Hugging Face Hub and ${token_env} {hint}: accept "
            f"the model's licence on the Hub, then set the environment variable {token_env} "
            "(named by hf_token_env) to a token that has access"
        )
    return ModelLoadError(f"cannot load model {name!r} (hub id or local path): {text}")


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (model.layers, transformer.h, gpt_neox.layers, ...)."""
    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelLoadError(f"cannot find the {count} decoder layers of {type(model).__name__}")


class _Stop(Exception):
    """Raised by the hook on the deepest layer wanted: the forward ends there."""


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def residuals_after(lm: LoadedLM, layers: Sequence[int], input_ids: Tensor) -> dict[int, Tensor]:
    """Residual stream (batch, seq, d_model) after each decoder layer of `layers`, from one
    forward; the layers after the deepest never run."""
    captured: dict[int, Tensor] = {}
    deepest = max(layers)

    def capture(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[layer] = _hidden(output)
            if layer == deepest:
                raise _Stop()

        return hook

    handles = [lm.layers[layer].register_forward_hook(capture(layer)) for layer in set(layers)]
    try:
        lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
    except _Stop:
        return captured
    finally:
        for handle in handles:
            handle.remove()
    raise ModelLoadError(f"layer {deepest} of {lm.name} never ran")


def residual_after(lm: LoadedLM, layer: int, input_ids: Tensor) -> Tensor:
    """Residual stream (batch, seq, d_model) after decoder layer `layer`; the layers after it
    never run."""
    return residuals_after(lm, (layer,), input_ids)[layer]


@contextmanager
def spliced(lm: LoadedLM, layer: int, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the output of decoder layer `layer` is replaced by replace(output)."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = lm.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
