import subprocess
import sys

import pytest
from pydantic import ValidationError

from sae.config import RunConfig, load_run_config

BASE = {
    "model": "m",
    "layer": 0,
    "dataset": "d",
    "sae": {"n_latents": 64},
    "train": {"total_tokens": 8192},
}


def config(**changes):
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    for path, value in changes.items():
        section, _, field = path.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return RunConfig.model_validate(raw)


def test_minimal_config_has_defaults_everywhere_else():
    run = config()
    assert run.sae.kind == "topk" and run.train.batch_tokens == 4096
    assert run.train.total_steps == 2
    assert run.early_stop.enabled


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"sae__kind": "relu", "sae__k": 8}, "sae.k"),
        ({"sae__l1_coef": 1.0}, "sae.l1_coef"),
        ({"sae__expansion_factor": 4}, "sae.n_latents and sae.expansion_factor"),
        ({"sae__k": 65}, "sae.k (65) must not exceed sae.n_latents"),
        ({"train__grad_accum_steps": 3}, "train.grad_accum_steps"),
        ({"train__shuffle_buffer_tokens": 1024}, "train.shuffle_buffer_tokens"),
        ({"train__total_tokens": 100}, "train.total_tokens"),
        ({"early_stop__min_tokens": 10**9}, "early_stop.min_tokens"),
        ({"early_stop__val_tokens": 10**6}, "early_stop.val_tokens"),
        ({"train__unknown": 1}, "unknown"),
    ],
)
def test_bad_combinations_name_the_fields(changes, names):
    with pytest.raises(ValidationError) as info:
        config(**changes)
    assert names in str(info.value)


def test_missing_total_tokens_is_an_error():
    with pytest.raises(ValidationError, match="total_tokens"):
        RunConfig.model_validate({**BASE, "train": {}})


def test_dump_round_trips_for_both_kinds():
    for run in (config(), config(sae__kind="relu", sae__l1_coef=0.1, sae__k=32)):
        assert RunConfig.model_validate(run.model_dump()) == run


def test_example_configs_validate():
    tiny = load_run_config("sae/configs/tiny.yaml")
    seed = load_run_config("sae/configs/llama31-8b-l12-pii.yaml")
    assert tiny.train.total_tokens <= 50_000 and tiny.context_len == 64
    assert seed.model == "meta-llama/Llama-3.1-8B" and seed.layer == 12
    assert seed.sae.n_latents == 32768 and seed.pii_only


def test_control_plane_modules_do_not_import_torch():
    code = (
        "import sys, sae, sae.config, sae.checkpoint, sae.pii, sae.corpus, sae.plots, sae.errors;"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
