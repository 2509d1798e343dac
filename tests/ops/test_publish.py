"""`sweep publish`: a sweep's final SAEs, written by the real sae code into the store, copied in
SAELens' layout to a folder, to an S3 prefix (moto's server, its own process) and to a hub repo
(huggingface_hub's own HfApi against a loopback fake of the hub's API, tests.support.fake_hub),
then loaded back with SAELens' own loader; and every refusal before anything is copied."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import huggingface_hub
import pytest
import torch

from jobs.objectstore import final_prefix, open_store, publish_folder, summary_key
from jobs.results import JobResult, build_summary
from ops import publish as publish_module
from queue_app.settings import get_settings
from queue_app.statemachine import JobState
from sae.artifacts import CFG, SAE_LENS_WEIGHTS, write_final
from sae.config import RunConfig
from sae.model import SparseAutoencoder
from tests.ops.bad_input import Outcome, saefleet
from tests.support.fake_hub import FakeHub, running_hub
from tests.support.moto_s3 import TEST_CREDENTIALS, moto_s3_server

# SAELens (the bench extra, installed by `make test`) is imported by the tests that load with it:
# importing it costs seconds of CPU (transformer_lens, sympy), paid by one pytest-xdist worker.
SAE_LENS = pytest.mark.xdist_group("sae_lens")

SWEEP = "swpub"
D_IN = 16
TOKEN = "hf_" + "x7Kq" * 8
FOLDERS = {"sae.k=4", "sae.k=8"}


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Credentials for moto; make_bucket() -> a fresh bucket's name."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint)

    def make_bucket() -> str:
        bucket = f"sf-pub-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket)
        return bucket

    return make_bucket


def trained_sae(k: int, seed: int) -> SparseAutoencoder:
    """A TopK SAE with non-trivial biases and a normalisation scale to fold in."""
    generator = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(D_IN, 64, "topk", k, generator=generator)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(64, generator=generator) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN, generator=generator))
        sae.norm_scale.fill_(2.5)
    return sae


def job(index: int, name: str, state: JobState, metrics: dict[str, Any]) -> JobResult:
    return JobResult(
        job_id=f"{SWEEP}-{index:04d}",
        index=index,
        name=name,
        state=state,
        reason=None if state is JobState.SUCCEEDED else "verify_gpu: no CUDA",
        attempts=1,
        preemptions=0,
        cost_usd=0.25,
        instance_hours=0.1,
        overrides={},
        metrics=metrics,
        latest_checkpoint=None,
        artifacts_dir=None,
    )


@pytest.fixture
def finished_sweep(tmp_path: Path) -> dict[str, SparseAutoencoder]:
    """A finished sweep in the configured store: two succeeded jobs (final/ written by
    sae.artifacts.write_final and published with its manifest) and a failed one."""
    store = open_store(get_settings())
    config = RunConfig.model_validate(
        {
            "model": "tiny-lm",
            "layer": 1,
            "dataset": "corpus.jsonl",
            "sae": {"n_latents": 64},
            "train": {"total_tokens": 8192},
        }
    )
    saes, results = {}, []
    for index, k in enumerate((4, 8)):
        sae = trained_sae(k, index)
        metrics = {"fvu": 0.2 / k, "l0": float(k), "ce_loss_recovered": 0.9, "tokens": 1024}
        result = job(index, f"sae.k={k}", JobState.SUCCEEDED, metrics)
        final = write_final(tmp_path / result.job_id / "final", sae, config, {"evals": metrics})
        publish_folder(store, final_prefix(SWEEP, result.job_id), final)
        saes[result.name] = sae
        results.append(result)
    results.append(job(2, "sae.k=16", JobState.FAILED, {}))
    summary = build_summary(SWEEP, "tiny-pub", results)
    store.put_bytes(summary_key(SWEEP), summary.model_dump_json().encode())
    return saes


def assert_loads_in_sae_lens(root: Path, saes: dict[str, SparseAutoencoder]) -> None:
    """Each SAE folder under `root` holds exactly SAELens' two files, and SAELens' loader
    reconstructs raw activations as our SAE does."""
    import sae_lens

    assert {p.name for p in root.iterdir() if p.is_dir()} == set(saes)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(9)) * 3
    for folder, ours in saes.items():
        assert {p.name for p in (root / folder).iterdir()} == {CFG, SAE_LENS_WEIGHTS}
        loaded = sae_lens.SAE.load_from_disk(root / folder)
        assert loaded.cfg.d_sae == 64 and loaded.cfg.k == ours.k
        with torch.no_grad():
            assert torch.allclose(loaded(x), ours(x).x_hat, atol=1e-5)


def assert_readme(root: Path) -> None:
    text = (root / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: saelens\n")
    assert (
        "| SAE | model | hook | d_in | d_sae | k | fvu | l0 | ce_loss_recovered | tokens |" in text
    )
    assert (
        "| `sae.k=4` | tiny-lm | blocks.1.hook_resid_post | 16 | 64 | 4 | 0.05 | 4 | 0.9 |" in text
    )
    assert "sae.k=16" not in text  # the failed job is not published


def refused(outcome: Outcome, *fragments: str) -> None:
    assert outcome.code == 2, outcome
    assert outcome.err.startswith("error: ") and len(outcome.problems) == 1, outcome.err
    assert outcome.out == "" and "Traceback" not in outcome.err
    for fragment in fragments:
        assert fragment in outcome.err, (fragment, outcome.err)


@SAE_LENS
def test_file_store_to_a_folder_and_force(finished_sweep: dict, tmp_path: Path) -> None:
    out = tmp_path / "published"
    done = saefleet("sweep", "publish", SWEEP, "--to", out.as_uri())
    assert done.code == 0, done
    assert "published 2 SAEs" in done.out
    assert_loads_in_sae_lens(out, finished_sweep)
    assert_readme(out)
    assert publish_module.SAE_FILES == (CFG, SAE_LENS_WEIGHTS)

    before = (out / "README.md").read_text()
    refused(saefleet("sweep", "publish", SWEEP, "--to", out.as_uri()), "exists", "--force")
    assert (out / "README.md").read_text() == before
    (out / "stale").mkdir()
    (out / "stale" / "cfg.json").write_text("{}")
    forced = saefleet("sweep", "publish", SWEEP, "--to", out.as_uri(), "--force", "--json")
    assert forced.code == 0, forced
    assert json.loads(forced.out)["saes"] == {
        "sae.k=4": f"{SWEEP}-0000",
        "sae.k=8": f"{SWEEP}-0001",
    }
    assert_loads_in_sae_lens(out, finished_sweep)  # the stale folder is gone


@pytest.fixture
def s3_store(s3_env: Any, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """SAEFLEET_STORE_URL on a fresh moto bucket."""
    monkeypatch.setenv("SAEFLEET_STORE_URL", f"s3://{s3_env()}/fleet")
    monkeypatch.setenv("SAEFLEET_STORE_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@SAE_LENS
def test_s3_store_to_an_s3_prefix(
    s3_store: str, s3_env: Any, finished_sweep: dict, tmp_path: Path
) -> None:
    bucket = s3_env()
    to = f"s3://{bucket}/saes/tiny"
    missing = f"s3://sf-pub-missing-{secrets.token_hex(3)}/saes"
    refused(saefleet("sweep", "publish", SWEEP, "--to", missing), "bucket does not exist")

    done = saefleet("sweep", "publish", SWEEP, "--to", to)
    assert done.code == 0, done
    client = boto3.client("s3", endpoint_url=s3_store)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 5 and all(k.startswith("saes/tiny/") for k in keys)
    copy = tmp_path / "copy"
    for key in keys:
        (copy / key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(copy / key))
    assert_loads_in_sae_lens(copy / "saes" / "tiny", finished_sweep)
    assert_readme(copy / "saes" / "tiny")
    refused(saefleet("sweep", "publish", SWEEP, "--to", to), "exists", "3 entries")


def test_refusals_copy_nothing(finished_sweep: dict, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "never"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    refused(saefleet("sweep", "publish", SWEEP, "--to", "gs://b/p"), "unknown scheme 'gs'")
    refused(saefleet("sweep", "publish", SWEEP, "--to", "s3://only-bucket"), "s3://bucket/prefix")
    refused(saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes"), "set HF_TOKEN")
    refused(saefleet("sweep", "publish", SWEEP, "--to", "hf://not a repo"), "not a hub repo id")
    refused(saefleet("sweep", "publish", "nosuch", "--to", out.as_uri()), "no summary.json")
    store_root = get_settings().home / "artifacts"
    for inside in (store_root, store_root / SWEEP / "out", store_root.parent):
        refused(saefleet("sweep", "publish", SWEEP, "--to", inside.as_uri(), "--force"), "overlaps")
    assert (store_root / SWEEP).is_dir() and not (store_root / SWEEP / "out").exists()
    (tmp_path / "a-file").write_text("x")
    refused(saefleet("sweep", "publish", SWEEP, "--to", (tmp_path / "a-file").as_uri()), "cannot")
    assert not out.exists()

    weights = get_settings().home / "artifacts" / final_prefix(SWEEP, f"{SWEEP}-0001")
    (weights / SAE_LENS_WEIGHTS).write_bytes(b"torn")
    corrupt = saefleet("sweep", "publish", SWEEP, "--to", out.as_uri())
    assert corrupt.code == 1 and "does not verify" in corrupt.err, corrupt
    assert not out.exists()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """The loopback hub, where huggingface_hub points (as HF_ENDPOINT would), with its own
    download cache."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with running_hub(TOKEN) as fake:
        constants = huggingface_hub.constants
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        template = f"{fake.endpoint}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield fake


def repo_copy(hub: FakeHub, repo: str, dest: Path) -> Path:
    for name, data in hub.repos[repo].items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return dest


@SAE_LENS
def test_hub_repo_is_created_written_and_replaced_only_with_force(
    hub: FakeHub, finished_sweep: dict, tmp_path: Path
) -> None:
    done = saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes")
    assert done.code == 0, done
    copy = repo_copy(hub, "org/saes", tmp_path / "hub")
    assert_loads_in_sae_lens(copy, finished_sweep)
    assert_readme(copy)
    assert 'SAE.from_pretrained("org/saes", "sae.k=4")' in (copy / "README.md").read_text()
    import sae_lens

    from_hub = sae_lens.SAE.from_pretrained("org/saes", "sae.k=8")  # as the README says
    x = torch.randn(8, D_IN)
    assert torch.allclose(from_hub(x), finished_sweep["sae.k=8"](x).x_hat, atol=1e-5)
    assert ("POST", "/api/repos/create") in hub.requests
    assert not list(get_settings().home.glob(".publish-*"))  # the staging folder is gone

    commits = len([r for r in hub.requests if "/commit/" in r[1]])
    refused(saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes"), "holds 5 files")
    assert len([r for r in hub.requests if "/commit/" in r[1]]) == commits

    hub.repos["org/saes"]["stale/cfg.json"] = b"{}"
    forced = saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes", "--force")
    assert forced.code == 0, forced
    assert "stale/cfg.json" not in hub.repos["org/saes"]
    assert TOKEN not in done.out + done.err + forced.out + forced.err


def test_hub_errors_never_show_the_token(
    hub: FakeHub, finished_sweep: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.fail_commits = 1
    failed = saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes")
    assert failed.code == 1 and "the hub answered 422" in failed.err, failed
    assert hub.repos["org/saes"] == {}

    hub.token = "hf_" + "other" * 6  # the hub no longer accepts ours; its 401 echoes it
    denied = saefleet("sweep", "publish", SWEEP, "--to", "hf://org/saes")
    refused(denied, "hf://org/saes", "401")
    assert TOKEN[3:] not in denied.err + failed.err + failed.out
