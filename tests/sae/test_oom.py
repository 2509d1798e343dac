"""What to halve after an out-of-memory (sae.oom), and where the test hook fires; no LM."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae.errors import OutOfMemory
from sae.oom import InjectedOOM, halve_for
from tests.sae.conftest import tiny_config

PATHS = (Path("tiny-lm"), Path("corpus.jsonl"))  # a config only: nothing is read


def test_the_forward_batch_halves_first_then_the_micro_batch_down_to_its_floor() -> None:
    config = tiny_config(*PATHS, train={"lm_batch_size": 3, "grad_accum_steps": 256})
    halved, restart = halve_for([config], 7, "CUDA out of memory", in_forward=True)
    assert restart == {
        "at_step": 7,
        "halved": "lm_batch",
        "note": "out of memory in the LM forward at step 7; LM batch 3 -> 1 contexts",
    }
    assert halved[0].train.micro_batch_tokens == config.train.micro_batch_tokens == 2
    halved, restart = halve_for(halved, 7, "CUDA out of memory", in_forward=True)
    assert (restart["halved"], restart["micro_batch_tokens"]) == ("micro_batch", [1])
    with pytest.raises(OutOfMemory, match="micro-batch of 1 tokens, which cannot be halved"):
        halve_for(halved, 7, "CUDA out of memory", in_forward=False)


def test_the_injected_fault_fires_at_its_step_where_it_is_asked_to() -> None:
    config = tiny_config(*PATHS, train={"lm_batch_size": 4})
    micro = config.train.micro_batch_tokens
    assert InjectedOOM(3).fires(3, [config]) and not InjectedOOM(3).fires(4, [config])
    assert InjectedOOM(3).once and not InjectedOOM(3, above_lm_batch=1).once
    assert InjectedOOM(3, above_micro_batch=micro - 1).fires(3, [config])
    assert not InjectedOOM(3, above_micro_batch=micro).fires(3, [config])
    assert InjectedOOM(3, above_lm_batch=2).fires(3, [config])
    assert not InjectedOOM(3, above_lm_batch=4).fires(3, [config])
    assert not InjectedOOM(3, above_members=1).fires(3, [config])
    assert InjectedOOM(3, above_members=1).fires(3, [config, config])
