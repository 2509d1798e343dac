"""Preflight: each failed check is one line saying what to do; unreachable services are
SKIPPED, never passed; tokens never appear in the output. The Lambda API and the Hugging Face
Hub are fakes on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from jobs.preflight import PreflightReport, run_preflight
from jobs.providers.lambda_api import RetryPolicy
from jobs.providers.lambda_cloud import LambdaCloud
from jobs.providers.pacing import Pacer, Rate
from jobs.spec import SweepSpec
from jobs.ssh_connect import ensure_keypair
from queue_app.processes import free_port
from queue_app.settings import Settings
from tests.support.fake_lambda import FakeLambda, running_fake_lambda

GOOD_TOKEN = "hf_goodTokenWithAccess0123456789"
NO_ACCESS_TOKEN = "hf_validTokenWithoutAccess987654"
REVOKED_TOKEN = "hf_revokedToken000000000000000"
GATED = {("models", "meta-llama/Llama-3.1-8B"), ("datasets", "lmsys/lmsys-chat-1m")}
PUBLIC = {("models", "gpt2"), ("datasets", "public/chats")}


class FakeHub:
    """Answers /api/{models,datasets}/<repo>/auth-check like the Hub does."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append(self.path)
                time.sleep(hub.delay_s)
                status, headers = hub.answer(self.path, self.headers.get("authorization", ""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, str]]:
        kind, _, rest = path.removeprefix("/api/").partition("/")
        repo = (kind, rest.removesuffix("/auth-check"))
        token = authorization.removeprefix("Bearer ").strip()
        if token == REVOKED_TOKEN:
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}
        if repo in PUBLIC or (repo in GATED and token == GOOD_TOKEN):
            return 200, {}
        if repo in GATED:
            return 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}
        return 404, {"X-Error-Code": "RepoNotFound"}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    with running_fake_lambda() as api:
        yield api


@pytest.fixture
def settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("LAMBDA_API_KEY", "SAEFLEET_LAMBDA_API_KEY_FILE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return Settings()


def sweep(provider: dict[str, Any] | None = None, **job: Any) -> SweepSpec:
    base = {
        "model": "meta-llama/Llama-3.1-8B",
        "layer": 12,
        "dataset": "lmsys/lmsys-chat-1m",
        "sae": {"n_latents": 32768},
        "train": {"total_tokens": 1_000_000},
    }
    return SweepSpec.model_validate(
        {"name": "pf", "provider": provider or {"name": "local"}, "job": {**base, **job}}
    )


def cloud(api: FakeLambda, key: str | None = None) -> LambdaCloud:
    return LambdaCloud(
        key or api.api_key,
        api.base_url,
        timeout=2,
        pacer=Pacer({"request": Rate(0.0), "launch": Rate(0.0)}),
        retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01, jitter_s=0),
    )


def by_check(report: PreflightReport) -> dict[str, tuple[str, str]]:
    return {r.check: (r.status, r.message) for r in report.results}


# ---- local paths: fast, no network -------------------------------------------------------------


def test_local_paths_are_checked_for_existence_without_any_network(
    settings: Settings, tmp_path: Path
) -> None:
    model = tmp_path / "tiny-lm"
    model.mkdir()
    data = tmp_path / "chats.jsonl"
    data.write_text("{}\n")
    started = time.monotonic()
    report = run_preflight(
        sweep(model=str(model), dataset=str(data)),
        settings,
        None,
        hf_endpoint=f"http://127.0.0.1:{free_port()}",
    )
    assert time.monotonic() - started < 1.0
    assert report.ok
    assert by_check(report) == {
        "model": ("passed", f"local path {model} exists"),
        "dataset": ("passed", f"local path {data} exists"),
    }


def test_a_missing_local_path_fails_with_what_to_fix(settings: Settings, tmp_path: Path) -> None:
    report = run_preflight(
        sweep(model=str(tmp_path / "nope"), dataset="./gone.jsonl"), settings, None
    )
    assert not report.ok
    assert [line.split(":")[0] for line in report.lines()] == ["FAILED model", "FAILED dataset"]
    assert "does not exist: fix job.model" in report.lines()[0]


# ---- Hugging Face ------------------------------------------------------------------------------


def test_a_gated_model_without_a_token_says_how_to_get_access(
    settings: Settings, hub: FakeHub
) -> None:
    report = run_preflight(sweep(), settings, None, hf_endpoint=hub.url)
    model, dataset = report.failures
    assert model.check == "model"
    assert "gated and HF_TOKEN is not set" in model.message
    assert "https://huggingface.co/meta-llama/Llama-3.1-8B" in model.message
    assert "export HF_TOKEN=" in model.message
    assert "https://huggingface.co/datasets/lmsys/lmsys-chat-1m" in dataset.message


def test_an_accepted_token_passes_and_is_never_printed(
    settings: Settings, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_HF", GOOD_TOKEN)
    report = run_preflight(sweep(hf_token_env="MY_HF"), settings, None, hf_endpoint=hub.url)
    assert report.ok
    assert by_check(report)["model"] == (
        "passed",
        "meta-llama/Llama-3.1-8B is accessible with MY_HF",
    )
    assert GOOD_TOKEN not in report.model_dump_json()


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (NO_ACCESS_TOKEN, "has no access yet: accept its terms"),
        (REVOKED_TOKEN, "the Hub rejected the token in HF_TOKEN"),
    ],
)
def test_a_token_without_access_fails_without_printing_it(
    settings: Settings, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, token: str, expected: str
) -> None:
    monkeypatch.setenv("HF_TOKEN", token)
    report = run_preflight(sweep(), settings, None, hf_endpoint=hub.url)
    assert expected in by_check(report)["model"][1]
    assert token not in "\n".join(report.lines())


def test_a_hub_id_that_does_not_exist_fails(settings: Settings, hub: FakeHub) -> None:
    report = run_preflight(
        sweep(model="meta-llama/Llama-3.2-8B"), settings, None, hf_endpoint=hub.url
    )
    status, message = by_check(report)["model"]
    assert status == "failed"
    assert "meta-llama/Llama-3.2-8B is not on the Hugging Face Hub" in message


def test_an_unreachable_or_offline_hub_is_skipped_not_passed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    report = run_preflight(sweep(), settings, None, hf_endpoint=closed)
    assert [r.status for r in report.results] == ["skipped", "skipped"]
    assert report.ok
    assert all("SKIPPED, not passed" in line for line in report.lines())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = run_preflight(sweep(), settings, None, hf_endpoint=closed)
    assert "offline (HF_HUB_OFFLINE)" in by_check(report)["model"][1]


def test_a_hub_that_does_not_answer_in_time_is_skipped(settings: Settings, hub: FakeHub) -> None:
    hub.delay_s = 2.0
    started = time.monotonic()
    report = run_preflight(sweep(), settings, None, hf_endpoint=hub.url, hub_timeout_s=0.2)
    assert time.monotonic() - started < 1.5
    assert "timed out" in by_check(report)["dataset"][1]


# ---- Lambda ------------------------------------------------------------------------------------

LAMBDA = {"name": "lambda"}


def test_lambda_without_a_key_fails_with_what_to_set(settings: Settings, tmp_path: Path) -> None:
    report = run_preflight(
        sweep(LAMBDA, model=str(tmp_path), dataset=str(tmp_path)), settings, None
    )
    status, message = by_check(report)["lambda-api-key"]
    assert status == "failed" and "LAMBDA_API_KEY" in message


def test_lambda_key_accepted_and_ssh_key_registrable(
    settings: Settings, tmp_path: Path, fake_lambda: FakeLambda
) -> None:
    spec = sweep(LAMBDA, model=str(tmp_path), dataset=str(tmp_path))
    report = run_preflight(spec, settings, cloud(fake_lambda))
    assert report.ok
    assert by_check(report)["lambda-api-key"] == ("passed", "Lambda accepts it")
    assert "registered as 'saefleet' at the first launch" in by_check(report)["ssh-key"][1]
    assert fake_lambda.paths() == ["GET ssh-keys"]


def test_lambda_key_built_from_settings(
    settings: Settings, tmp_path: Path, fake_lambda: FakeLambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDA_API_KEY", fake_lambda.api_key)
    monkeypatch.setenv("SAEFLEET_LAMBDA_BASE_URL", fake_lambda.base_url)
    spec = sweep(LAMBDA, model=str(tmp_path), dataset=str(tmp_path))
    assert run_preflight(spec, Settings(), None).ok


def test_ssh_key_ours_passes_someone_elses_fails(
    settings: Settings, tmp_path: Path, fake_lambda: FakeLambda
) -> None:
    spec = sweep(LAMBDA, model=str(tmp_path), dataset=str(tmp_path))
    _, public_key = ensure_keypair(settings.keys_dir)
    fake_lambda.ssh_keys["saefleet"] = public_key.rsplit(" ", 1)[0] + " other-comment"
    assert by_check(run_preflight(spec, settings, cloud(fake_lambda)))["ssh-key"][0] == "passed"
    fake_lambda.ssh_keys["saefleet"] = "ssh-ed25519 AAAAsomeoneElsesKey laptop"
    status, message = by_check(run_preflight(spec, settings, cloud(fake_lambda)))["ssh-key"]
    assert status == "failed" and "delete it on Lambda's SSH keys page" in message


def test_a_rejected_lambda_key_fails_and_an_unreachable_api_is_skipped(
    settings: Settings, tmp_path: Path, fake_lambda: FakeLambda
) -> None:
    spec = sweep(LAMBDA, model=str(tmp_path), dataset=str(tmp_path))
    wrong = cloud(fake_lambda, key="not-the-key-0000000000")
    status, message = by_check(run_preflight(spec, settings, wrong))["lambda-api-key"]
    assert status == "failed" and "invalid-api-key" in message and "LAMBDA_API_KEY" in message
    fake_lambda.fail(count=5, status=503)
    status, message = by_check(run_preflight(spec, settings, cloud(fake_lambda)))["lambda-api-key"]
    assert status == "skipped" and "SKIPPED, not passed" in message


def test_the_file_system_must_exist_in_an_allowed_region(
    settings: Settings, tmp_path: Path, fake_lambda: FakeLambda
) -> None:
    def check(provider: dict[str, Any]) -> tuple[str, str]:
        spec = sweep({"name": "lambda", **provider}, model=str(tmp_path), dataset=str(tmp_path))
        return by_check(run_preflight(spec, settings, cloud(fake_lambda)))["file-system"]

    assert check({"file_system": "ckpts"})[0] == "failed"
    fake_lambda.add_file_system("ckpts", "us-west-1")
    assert check({"file_system": "ckpts"}) == ("passed", "ckpts is in us-west-1")
    status, message = check({"file_system": "ckpts", "regions": ["us-east-1"]})
    assert status == "failed" and "add us-west-1" in message


def test_report_lines_are_one_per_check() -> None:
    report = PreflightReport.model_validate(
        {"results": [{"check": "model", "status": "failed", "message": "do this"}]}
    )
    assert report.lines() == ["FAILED model: do this"]
    assert json.loads(report.model_dump_json())["results"][0]["status"] == "failed"


def test_tracking_needs_the_wandb_key_unless_offline(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = tmp_path / "lm", tmp_path / "d.jsonl"
    model.mkdir()
    data.write_text("{}\n")
    tracked = sweep(model=str(model), dataset=str(data), tracking={"wandb_project": "p"})
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    [failed] = run_preflight(tracked, settings, None).failures
    assert failed.check == "wandb-key" and "WANDB_API_KEY is not set" in failed.message
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_preflight(tracked, settings, None).ok
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k-secret-123")
    report = run_preflight(tracked, settings, None)
    assert report.ok and "k-secret-123" not in " ".join(report.lines())
