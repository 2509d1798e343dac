"""Packs: several SAEs trained from one activation stream on the tiny LM (sae.pack)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from sae.checkpoint import list_checkpoints
from sae.errors import ConfigError, OutOfMemory
from sae.oom import InjectedOOM, with_micro_batch_halved
from sae.pack import PackRun
from sae.pack_rules import check_packable, stream_key
from sae.run import TrainingRun
from tests.sae.conftest import tiny_config
from tests.sae.test_run import stop_after

STEPS = 8
TOKENS = STEPS * 512


def members(tiny_lm: Path, corpus: Path, **train: Any) -> list[Any]:
    """Two SAEs that differ in k and in layer (one forward hooks layers 1 and 2)."""
    return [
        tiny_config(tiny_lm, corpus, train={"total_tokens": TOKENS, **train}),
        tiny_config(
            tiny_lm, corpus, layer=1, sae={"k": 16}, train={"total_tokens": TOKENS, **train}
        ),
    ]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "sae.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    ours, theirs = weights(a), weights(b)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


@pytest.fixture(scope="module")
def straight(tiny_lm: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The run directories of an uninterrupted pack of the two members."""
    root = tmp_path_factory.mktemp("straight")
    dirs = [root / "a", root / "b"]
    result = PackRun(members(tiny_lm, corpus), dirs).train()
    assert [m.done for m in result.members] == [True, True] and result.position == STEPS
    return dirs


def test_each_member_trains_as_it_would_alone(tiny_lm, corpus, straight, tmp_path):
    for index, config in enumerate(members(tiny_lm, corpus)):
        alone = TrainingRun(config, tmp_path / str(index))
        assert alone.train().done
        assert_same_weights(straight[index], tmp_path / str(index))


def test_one_forward_per_lm_batch_feeds_every_member(tiny_lm, corpus, tmp_path):
    def layer_calls(configs: list[Any], name: str) -> tuple[int, int]:
        """Calls of the first and the last decoder layer while the pack trains 6 steps."""
        pack = PackRun(configs, [tmp_path / name / str(i) for i in range(len(configs))])
        first, last = [], []
        handles = [
            pack.lm.layers[0].register_forward_hook(lambda *_: first.append(1)),
            pack.lm.layers[3].register_forward_hook(lambda *_: last.append(1)),
        ]
        try:
            pack.train(should_stop=stop_after(6))
        finally:
            for handle in handles:
                handle.remove()
        return len(first), len(last)

    both = members(tiny_lm, corpus)
    packed, alone = layer_calls(both, "pack"), layer_calls(both[:1], "alone")
    assert packed == alone and packed[0] > 0 and packed[1] == 0  # stopped after layer 2


def test_resumed_pack_is_bit_identical_to_an_uninterrupted_one(tiny_lm, corpus, straight, tmp_path):
    configs = members(tiny_lm, corpus)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for steps in (3, 5):  # mid-chunk, then at a chunk boundary; a fresh process each time
        result = PackRun(configs, dirs).train(should_stop=stop_after(steps))
        checkpoints = {Path(m.checkpoint).name for m in result.members}
        assert len(checkpoints) == 1  # every member at the same stream position
    result = PackRun(configs, dirs).train()
    assert all(m.done and m.step == STEPS for m in result.members)
    for ours, theirs in zip(dirs, straight, strict=True):
        assert_same_weights(ours, theirs)


def test_a_member_with_a_corrupt_checkpoint_falls_back_alone(tiny_lm, corpus, straight, tmp_path):
    configs = members(tiny_lm, corpus, checkpoint_every_tokens=1024)
    dirs = [tmp_path / "a", tmp_path / "b"]
    PackRun(configs, dirs).train(should_stop=stop_after(6))
    newest = list_checkpoints(dirs[1] / "checkpoints")[-1]
    assert newest.name.endswith("06")
    (newest / "state.pt").write_bytes(b"torn write")
    resumed = PackRun(configs, dirs)
    assert [m.step for m in resumed.members] == [6, 4] and resumed.position == 4
    result = resumed.train()
    assert all(m.done for m in result.members)
    for ours, theirs in zip(dirs, straight, strict=True):
        assert_same_weights(ours, theirs)


def test_out_of_memory_resumes_with_half_the_micro_batch(tiny_lm, corpus, straight, tmp_path):
    configs = members(tiny_lm, corpus, checkpoint_every_tokens=1024)
    dirs = [tmp_path / "a", tmp_path / "b"]
    pack = PackRun(configs, dirs, inject_oom=InjectedOOM(at_step=5))
    heard: list[dict[str, Any]] = []
    result = pack.train(on_oom=heard.append)
    assert result.oom_restarts == [
        {
            "at_step": 5,
            "halved": "micro_batch",
            "grad_accum_steps": [2, 2],
            "micro_batch_tokens": [256, 256],
            "note": "out of memory at step 5; micro-batch 512 -> 256 tokens",
        }
    ]
    assert heard == result.oom_restarts
    assert all(m.done and m.step == STEPS for m in result.members)
    assert_close_weights(dirs, straight)


def assert_close_weights(ours: list[Path], theirs: list[Path]) -> None:
    """The same math in other micro-batches: equal up to float summation order."""
    for mine, other in zip(ours, theirs, strict=True):
        for name, tensor in weights(mine).items():
            assert torch.allclose(tensor, weights(other)[name], atol=1e-4), name


def test_out_of_memory_halves_until_the_micro_batch_fits(tiny_lm, corpus, straight, tmp_path):
    configs = members(tiny_lm, corpus, checkpoint_every_tokens=1024)
    dirs = [tmp_path / "a", tmp_path / "b"]
    fault = InjectedOOM(at_step=3, above_micro_batch=128)
    result = PackRun(configs, dirs, inject_oom=fault).train()
    assert [r["micro_batch_tokens"] for r in result.oom_restarts] == [[256, 256], [128, 128]]
    assert all(m.done and m.step == STEPS for m in result.members)
    assert_close_weights(dirs, straight)


def test_out_of_memory_in_the_lm_forward_halves_its_batch(tiny_lm, corpus, straight, tmp_path):
    """The same activations in smaller forwards: the micro-batch stays, the math too."""
    configs = members(tiny_lm, corpus, checkpoint_every_tokens=1024)
    dirs = [tmp_path / "a", tmp_path / "b"]
    fault = InjectedOOM(at_step=3, above_lm_batch=8)  # the forward fits 8 contexts only
    pack = PackRun(configs, dirs, inject_oom=fault)
    result = pack.train()
    assert [r["note"] for r in result.oom_restarts] == [
        "out of memory in the LM forward at step 3; LM batch 16 -> 8 contexts"
    ]
    assert [c.train.lm_batch_size for c in pack.configs] == [8, 8]
    assert all(m.done and m.step == STEPS for m in result.members)
    assert [c.train.micro_batch_tokens for c in pack.configs] == [512, 512]
    assert_close_weights(dirs, straight)


def test_a_new_process_resumes_with_the_halved_micro_batch(tiny_lm, corpus, straight, tmp_path):
    """What the fleet's next attempt does: the recorded halvings applied to the job's config,
    the newest checkpoint restored, the same effective batch."""
    configs = members(tiny_lm, corpus)
    dirs = [tmp_path / "a", tmp_path / "b"]
    PackRun(configs, dirs).train(should_stop=stop_after(3))
    halved = [with_micro_batch_halved(config, 2) for config in configs]
    resumed = PackRun(halved, dirs)
    assert [m.config.train.micro_batch_tokens for m in resumed.members] == [128, 128]
    assert resumed.position == 3
    assert all(m.done for m in resumed.train().members)
    assert_close_weights(dirs, straight)


def test_a_split_pack_goes_on_from_each_members_own_checkpoint(tiny_lm, corpus, straight, tmp_path):
    """What a split does (jobs.pack_split): each member resumes in a smaller pack, here alone,
    from its own checkpoint of the pack (all at one stream position): bit-identical."""
    configs = members(tiny_lm, corpus)
    dirs = [tmp_path / "a", tmp_path / "b"]
    PackRun(configs, dirs).train(should_stop=stop_after(3))
    for config, run_dir in zip(configs, dirs, strict=True):
        alone = PackRun([config], [run_dir])
        assert alone.position == 3 and alone.train().members[0].done
    for ours, theirs in zip(dirs, straight, strict=True):
        assert_same_weights(ours, theirs)


def test_out_of_memory_at_the_smallest_micro_batch_says_so(tiny_lm, corpus, tmp_path):
    config = tiny_config(tiny_lm, corpus, train={"total_tokens": 1024, "grad_accum_steps": 512})
    pack = PackRun([config], [tmp_path / "a"], inject_oom=InjectedOOM(at_step=0))
    with pytest.raises(OutOfMemory, match="cannot be halved"):
        pack.train()


def test_early_stopping_and_failing_members_drop_out_alone(tiny_lm, corpus, straight, tmp_path):
    healthy = members(tiny_lm, corpus)[0]
    stopping = tiny_config(
        tiny_lm,
        corpus,
        sae={"k": 4},
        train={"total_tokens": TOKENS},
        early_stop={
            "enabled": True,
            "eval_every_tokens": 1024,
            "patience": 2,
            "min_rel_delta": 0.5,
        },
    )
    dirs = [tmp_path / name for name in ("healthy", "stopping", "nan", "raising")]
    pack = PackRun([healthy, stopping, healthy, healthy], dirs)
    with torch.no_grad():
        pack.members[2].trainer.sae.W_dec.fill_(float("nan"))

    def broken_step(batch: torch.Tensor) -> Any:
        raise RuntimeError("this member's own bug")

    pack.members[3].trainer.step = broken_step  # type: ignore[method-assign]
    result = pack.train()
    ok, stopped, nan, raising = result.members
    assert ok.done and ok.error is None and ok.step == STEPS
    assert stopped.done and stopped.early_stopped and stopped.tokens < TOKENS
    assert json.loads((dirs[1] / "final" / "metrics.json").read_text())["train"]["early_stopped"]
    assert not nan.done and nan.error is not None and nan.error.startswith("TrainingDiverged")
    assert raising.error == "RuntimeError: this member's own bug" and raising.step == 0
    assert not (dirs[2] / "final").exists() and not (dirs[3] / "final").exists()
    assert_same_weights(dirs[0], straight[0])


def test_nan_at_makes_one_members_loss_nan_at_its_step(tiny_lm, corpus, straight, tmp_path):
    healthy = members(tiny_lm, corpus)[0]
    dirs = [tmp_path / "ok", tmp_path / "nan"]
    ok, nan = PackRun([healthy, healthy], dirs, nan_at={1: 3}).train().members
    assert nan.error is not None and "loss is nan at step 4" in nan.error and nan.step == 4
    assert ok.done and ok.error is None
    assert_same_weights(dirs[0], straight[0])


def test_heartbeat_and_progress_name_every_member(tiny_lm, corpus, tmp_path):
    progress: list[dict[str, Any]] = []
    configs = members(tiny_lm, corpus)
    PackRun(configs, [tmp_path / "a", tmp_path / "b"]).train(
        should_stop=stop_after(2), on_progress=progress.append, heartbeat_path=tmp_path / "hb"
    )
    beat = json.loads((tmp_path / "hb").read_text())
    assert beat["step"] == 2 and [m["step"] for m in beat["members"]] == [2, 2]
    assert progress[-1]["members"][1]["l0"] == pytest.approx(16, abs=1)


def test_only_runs_with_the_same_stream_may_share_it(tiny_lm, corpus, tmp_path):
    base = tiny_config(tiny_lm, corpus, train={"total_tokens": TOKENS})
    other_sae = tiny_config(
        tiny_lm, corpus, layer=0, sae={"k": 4, "n_latents": 512}, train={"total_tokens": TOKENS}
    )
    same = [base, other_sae]
    assert stream_key(same[0]) == stream_key(same[1])
    check_packable(same)
    other_seed = tiny_config(tiny_lm, corpus, train={"total_tokens": TOKENS, "seed": 1})
    with pytest.raises(ConfigError, match=r"train\.seed \(0 vs 1\)"):
        check_packable([base, other_seed])
    with pytest.raises(ConfigError, match=r"train\.seed"):
        PackRun([base, other_seed], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="distinct run directory"):
        PackRun([base, base], [tmp_path / "a", tmp_path / "a"])
