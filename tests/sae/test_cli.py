import json

import yaml

from sae.cli import main


def write_config(tmp_path, config):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_train_then_eval(make_config, tmp_path, capsys):
    config = write_config(tmp_path, make_config(train={"total_tokens": 4096}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["done"]
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    final = tmp_path / "run" / "final"
    assert main(["eval", "--sae", str(final), "--config", str(config), "--json"]) == 0
    evals = json.loads(capsys.readouterr().out)
    assert evals["fvu"] == json.loads((final / "metrics.json").read_text())["evals"]["fvu"]
    assert evals["fvu"] < 0.5


def test_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: m\nlayer: 0\ndataset: d\nsae: {n_latents: 8, k: 9}\ntrain: {total_tokens: 8192}\n"
    )
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "sae.k (9) must not exceed sae.n_latents" in capsys.readouterr().err


def test_make_tiny_lm_is_deterministic(tmp_path, tiny_lm):
    assert main(["make-tiny-lm", str(tmp_path / "lm")]) == 0
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "lm" / name).read_bytes() == (tiny_lm / name).read_bytes()


def test_several_configs_train_as_one_pack(make_config, tmp_path, capsys):
    paths = []
    for name, k in (("k8", 8), ("k16", 16)):
        path = tmp_path / f"{name}.yaml"
        config = make_config(sae={"k": k}, train={"total_tokens": 2048})
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        paths += ["--config", str(path)]
    out = tmp_path / "pack"
    assert main(["train", *paths, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [m["done"] for m in result["members"]] == [True, True]
    assert (out / "k8" / "final" / "sae.safetensors").exists()
    assert (out / "k16" / "final" / "sae.safetensors").exists()
    assert main(["train", *paths, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *paths[:2], *paths[:2], "--out", str(tmp_path / "x")]) == 2
    assert "distinct names" in capsys.readouterr().err
