"""Whole training runs on the tiny LM: the fleet's contract (sae.run)."""

import json
import shutil
import time

import pytest
from safetensors.torch import load_file

from sae.checkpoint import latest_valid_checkpoint, list_checkpoints, verify_checkpoint
from sae.errors import ConfigError, DataError, ModelLoadError
from sae.run import SegmentResult, TrainingRun


def stop_after(steps):
    """A should_stop that fires after `steps` training steps have run."""
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > steps

    return should_stop


def test_tiny_run_trains_checkpoints_and_writes_final(make_config, tmp_path):
    progress = []
    run = TrainingRun(make_config(), tmp_path)
    result = run.train(on_progress=progress.append, heartbeat_path=tmp_path / "hb.json")
    assert SegmentResult.model_validate(json.loads(json.dumps(result.model_dump()))) == result
    assert result.done and not result.stopped and not result.early_stopped
    assert result.tokens == 16384 and result.step == 32
    assert verify_checkpoint(result.checkpoint)
    # FVU below 0.25 after 32 steps: measured 0.10-0.13 on the tiny LM (a random 256-latent
    # SAE starts at ~1.0); the margin absorbs float noise across machines, not regressions.
    assert result.metrics["fvu"] < 0.25 and result.metrics["l0"] == pytest.approx(8, abs=0.5)
    evals = result.metrics["evals"]
    assert evals["fvu"] < 0.25 and evals["ce_loss_recovered"] > 0.8
    assert evals["ce_loss_clean"] < evals["ce_loss_with_sae"] < evals["ce_loss_zero_ablation"]
    assert 0 <= evals["dead_fraction"] < 0.5
    assert evals["pii_probe"]["types"]["any"]["probe"]["f1"] > 0.6
    final = tmp_path / "final"
    assert {p.name for p in final.iterdir()} >= {
        "sae.safetensors",
        "cfg.json",
        "metrics.json",
        "training.png",
    }
    cfg = json.loads((final / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 8 and cfg["d_sae"] == 256
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    weights = load_file(final / "sae.safetensors")
    assert weights["W_enc"].shape == (cfg["d_in"], 256) and weights["W_dec"].shape == (
        256,
        cfg["d_in"],
    )
    keys = {"step", "tokens", "total_tokens", "loss", "l0", "tokens_per_s"}
    assert progress and all(keys <= set(p) for p in progress)
    assert json.loads((tmp_path / "hb.json").read_text())["step"] == 32


def test_resume_from_any_checkpoint_is_bit_identical(make_config, tmp_path):
    config = make_config(train={"total_tokens": 8192})
    TrainingRun(config, tmp_path / "straight").train()
    # interrupt mid-chunk (3 steps), then at a chunk boundary (4 more: 7... 8), each time in a
    # fresh TrainingRun that must resume from the checkpoint on disk
    for steps in (3, 5):
        result = TrainingRun(config, tmp_path / "resumed").train(should_stop=stop_after(steps))
        assert result.stopped and not result.done
    # the last time in a run built before its checkpoint arrived (the fleet's warm-up), which
    # restores it once it is there
    late = TrainingRun(config, tmp_path / "late")
    assert late.trainer.step_count == 0
    shutil.copytree(tmp_path / "resumed" / "checkpoints", tmp_path / "late" / "checkpoints")
    late.restore()
    assert late.trainer.step_count == 8
    result = late.train()
    assert result.done and result.step == 16
    straight = (tmp_path / "straight" / "final" / "sae.safetensors").read_bytes()
    resumed = (tmp_path / "late" / "final" / "sae.safetensors").read_bytes()
    assert straight == resumed


def test_train_again_continues_in_process_and_segments_respect_max_seconds(make_config, tmp_path):
    run = TrainingRun(make_config(), tmp_path)
    first = run.train(should_stop=stop_after(4))
    assert (first.step, first.stopped, first.done) == (4, True, False)
    timed = run.train(max_seconds=0)
    assert timed.step == 4 and not timed.stopped and timed.checkpoint == first.checkpoint
    rest = run.train()
    assert rest.done and rest.step == 32
    lm = run.lm
    assert TrainingRun(make_config(), tmp_path / "other").lm is lm  # module-level LM cache


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(make_config, tmp_path):
    config = make_config(train={"total_tokens": 8192, "checkpoint_every_tokens": 1024})
    TrainingRun(config, tmp_path).train(should_stop=stop_after(6))
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name[-2:] for p in checkpoints] == ["02", "04", "06"]  # keep_checkpoints: 3
    (checkpoints[-1] / "state.pt").write_bytes(b"torn write")
    assert latest_valid_checkpoint(tmp_path / "checkpoints") == checkpoints[1]
    resumed = TrainingRun(config, tmp_path)
    assert resumed.trainer.step_count == 4
    assert resumed.train().done


def test_checkpoint_dirs_are_relocatable(make_config, tmp_path):
    result = TrainingRun(make_config(), tmp_path / "a").train(should_stop=stop_after(2))
    moved = shutil.copytree(
        result.checkpoint, tmp_path / "elsewhere" / "checkpoints" / "step-0000000002"
    )
    assert verify_checkpoint(moved)
    assert str(tmp_path) not in (moved / "manifest.json").read_text()


def test_early_stopping_stops_on_a_plateau_and_records_tokens_saved(make_config, tmp_path):
    config = make_config(
        train={"total_tokens": 65536},
        early_stop={
            "enabled": True,
            "eval_every_tokens": 1024,
            "patience": 2,
            "min_rel_delta": 0.5,
        },
    )
    result = TrainingRun(config, tmp_path).train()
    assert result.done and result.early_stopped and result.tokens < 65536
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert metrics["train"]["tokens_saved"] == 65536 - result.tokens > 0


def test_relu_variant_trains(make_config, tmp_path):
    config = make_config(
        sae={"kind": "relu", "k": 32, "aux_k": 512, "aux_k_coef": 1 / 32, "l1_coef": 0.02}
    )
    result = TrainingRun(config, tmp_path).train()
    assert result.done and result.metrics["evals"]["fvu"] < 0.5
    assert json.loads((tmp_path / "final" / "cfg.json").read_text())["architecture"] == "standard"


@pytest.mark.xdist_group("sae_lens")  # one worker imports SAELens (tests/ops/test_publish.py)
def test_sae_lens_reads_the_final_sae(make_config, tmp_path):
    import sae_lens
    import torch

    run = TrainingRun(make_config(train={"total_tokens": 4096}), tmp_path)
    run.train()
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "final")
    x = run.val_acts[:64].float()
    assert torch.allclose(loaded(x), run.trainer.sae(x).x_hat, atol=1e-4)


def test_errors_name_the_problem(make_config, tmp_path):
    with pytest.raises(ModelLoadError, match="no such local directory"):
        TrainingRun(make_config(model=str(tmp_path / "missing-model")), tmp_path)
    with pytest.raises(DataError, match="no such file"):
        TrainingRun(make_config(dataset=str(tmp_path / "missing.jsonl")), tmp_path)
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        TrainingRun(make_config(layer=9), tmp_path)
    with pytest.raises(ConfigError, match=r"sae\.k"):
        TrainingRun(make_config(sae={"n_latents": None, "expansion_factor": 1, "k": 65}), tmp_path)


def test_heartbeat_is_fresh_while_training(make_config, tmp_path):
    beats = []

    def should_stop():
        path = tmp_path / "hb.json"
        if path.exists():
            beats.append(time.time() - json.loads(path.read_text())["time"])
        return False

    TrainingRun(make_config(train={"total_tokens": 4096}), tmp_path).train(
        should_stop=should_stop, heartbeat_path=tmp_path / "hb.json"
    )
    assert beats and max(beats) < 5


def test_stop_before_the_first_step_still_checkpoints_with_strict_json(make_config, tmp_path):
    result = TrainingRun(make_config(), tmp_path).train(should_stop=lambda: True)
    assert (result.step, result.stopped, result.done) == (0, True, False)
    assert verify_checkpoint(result.checkpoint)
    json.dumps(result.model_dump(), allow_nan=False)
    assert result.metrics["loss"] is None
