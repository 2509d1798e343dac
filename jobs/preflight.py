"""Preflight: the checks `sweep submit` runs before any instance is launched.

Each check passes, fails with one line saying what to do, or is SKIPPED when it cannot be made
(offline, a service unreachable): a skipped check is not a passed one.

- lambda-api-key: the key is present and Lambda accepts it (one GET /ssh-keys).
- ssh-key: the fleet's key pair is registered at Lambda, or its name is free to register.
- file-system: the sweep's persistent filesystem exists (and in an allowed region).
- aws-credentials, aws-ssh-cidrs, aws-regions: see jobs.preflight_aws.
- wandb-key: a tracked sweep has its W&B key in the job's `tracking.wandb_key_env` (or runs
  offline).
- model / dataset: a local path exists; a hub id is reachable with the token in the job's
  `hf_token_env` (gated repos such as meta-llama/Llama-3.1-8B need an accepted license).

Tokens are read from the environment and never printed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from jobs.providers.base import LaunchRequest, Provider
from jobs.providers.errors import AuthError, NotFound, ProviderError
from jobs.providers.lambda_cloud import from_settings
from jobs.providers.lambda_wire import SSHKey, same_public_key
from jobs.spec import SweepSpec
from jobs.ssh_connect import ensure_keypair

if TYPE_CHECKING:
    from queue_app.settings import Settings

HUB_TIMEOUT_S = 10.0
TOKENS_URL = "https://huggingface.co/settings/tokens"
FLEET_KEY_NAME: str = LaunchRequest.model_fields["ssh_key_name"].default
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt", ".csv")
_TRUTHY = {"1", "true", "yes", "on"}

Status = Literal["passed", "failed", "skipped"]
RepoType = Literal["model", "dataset"]


class CheckResult(BaseModel):
    """The outcome of one check; `message` says what to do when it failed."""

    model_config = ConfigDict(frozen=True)

    check: str
    status: Status
    message: str

    def line(self) -> str:
        return f"{self.status.upper()} {self.check}: {self.message}"


class PreflightReport(BaseModel):
    """Every check's result, in the order they ran."""

    model_config = ConfigDict(frozen=True)

    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    def lines(self) -> list[str]:
        return [r.line() for r in self.results]


@runtime_checkable
class LambdaAccount(Protocol):
    """What the Lambda checks need from the provider (LambdaCloud has it)."""

    def ssh_keys(self) -> list[SSHKey]: ...

    def file_system_region(self, name: str) -> str: ...


def run_preflight(
    spec: SweepSpec,
    settings: Settings,
    provider: Provider | None,
    *,
    hf_endpoint: str | None = None,
    hub_timeout_s: float = HUB_TIMEOUT_S,
) -> PreflightReport:
    """Run every check that applies to `spec` (its grid expanded). `provider`: the Lambda
    client to check with (None: built from `settings`); `hf_endpoint`: another Hub URL."""
    jobs = [job.config for job in spec.expand()]
    results: list[CheckResult] = []
    if spec.provider.name == "lambda":
        results += _lambda_checks(spec, settings, provider)
    if spec.provider.name == "aws":
        from jobs.preflight_aws import aws_checks
        from jobs.providers.aws import AWSProvider

        if not isinstance(provider, AWSProvider):
            provider = AWSProvider.from_spec(spec.provider)
        results += aws_checks(spec, provider)
    hub = _Hub(hf_endpoint, hub_timeout_s)
    for model, token_env in sorted({(j.model, j.hf_token_env) for j in jobs}):
        results.append(hub.check("model", model, token_env))
    for dataset, token_env in sorted({(j.dataset, j.hf_token_env) for j in jobs}):
        results.append(hub.check("dataset", dataset, token_env))
    for key_env in sorted({j.tracking.wandb_key_env for j in jobs if j.tracking}):
        results.append(_wandb_key_check(key_env))
    return PreflightReport(results=results)


def _wandb_key_check(key_env: str) -> CheckResult:
    """W&B tracking needs its key on the control plane (offline runs need none)."""
    if os.environ.get(key_env):
        return CheckResult(check="wandb-key", status="passed", message=f"{key_env} is set")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return CheckResult(check="wandb-key", status="passed", message="W&B runs offline")
    return CheckResult(
        check="wandb-key",
        status="failed",
        message=f"tracking is on but {key_env} is not set: export your W&B API key "
        "(https://wandb.ai/authorize) or set WANDB_MODE=offline",
    )


# ---- Lambda ------------------------------------------------------------------------------------


def _lambda_checks(
    spec: SweepSpec, settings: Settings, provider: Provider | None
) -> list[CheckResult]:
    if provider is None:
        try:
            client = from_settings(settings)
        except AuthError as exc:
            return [CheckResult(check="lambda-api-key", status="failed", message=str(exc))]
        with client:
            return _account_checks(spec, settings, client)
    if not isinstance(provider, LambdaAccount):
        message = f"{type(provider).__name__} has no Lambda account to check"
        return [CheckResult(check="lambda-api-key", status="skipped", message=message)]
    return _account_checks(spec, settings, provider)


def _account_checks(
    spec: SweepSpec, settings: Settings, account: LambdaAccount
) -> list[CheckResult]:
    try:
        keys = account.ssh_keys()
    except AuthError as exc:
        return [CheckResult(check="lambda-api-key", status="failed", message=str(exc))]
    except ProviderError as exc:
        message = f"SKIPPED, not passed: could not reach the Lambda API ({exc})"
        return [CheckResult(check="lambda-api-key", status="skipped", message=message)]
    results = [CheckResult(check="lambda-api-key", status="passed", message="Lambda accepts it")]
    results.append(_ssh_key_check(settings, keys))
    if spec.provider.file_system:
        results.append(_file_system_check(spec, account))
    return results


def _ssh_key_check(settings: Settings, keys: list[SSHKey]) -> CheckResult:
    key_path, public_key = ensure_keypair(settings.keys_dir)
    found = next((k for k in keys if k.name == FLEET_KEY_NAME), None)
    if found is None:
        message = f"not registered yet; registered as {FLEET_KEY_NAME!r} at the first launch"
        return CheckResult(check="ssh-key", status="passed", message=message)
    if same_public_key(found.public_key, public_key):
        return CheckResult(check="ssh-key", status="passed", message=f"{FLEET_KEY_NAME!r} is ours")
    return CheckResult(
        check="ssh-key",
        status="failed",
        message=(
            f"Lambda has an SSH key named {FLEET_KEY_NAME!r} that is not this fleet's key "
            f"({key_path}): delete it on Lambda's SSH keys page, and saefleet registers its own"
        ),
    )


def _file_system_check(spec: SweepSpec, account: LambdaAccount) -> CheckResult:
    name = spec.provider.file_system or ""
    try:
        region = account.file_system_region(name)
    except NotFound as exc:
        return CheckResult(check="file-system", status="failed", message=str(exc))
    except ProviderError as exc:
        message = f"SKIPPED, not passed: could not list filesystems ({exc})"
        return CheckResult(check="file-system", status="skipped", message=message)
    allowed = spec.provider.regions
    if allowed and region not in allowed:
        message = f"{name} is in {region}, not in provider.regions {allowed}: add {region}"
        return CheckResult(check="file-system", status="failed", message=message)
    return CheckResult(check="file-system", status="passed", message=f"{name} is in {region}")


# ---- Hugging Face ------------------------------------------------------------------------------


class _Hub:
    """Access checks against the Hugging Face Hub, each bounded by a timeout."""

    def __init__(self, endpoint: str | None, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    def check(self, kind: RepoType, name: str, token_env: str) -> CheckResult:
        local = Path(name).expanduser()
        if local.exists():
            return CheckResult(check=kind, status="passed", message=f"local path {local} exists")
        if _looks_local(name):
            message = f"local path {local} does not exist: fix job.{kind} or create it"
            return CheckResult(check=kind, status="failed", message=message)
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
            message = f"SKIPPED, not passed: offline (HF_HUB_OFFLINE); access to {name} unchecked"
            return CheckResult(check=kind, status="skipped", message=message)
        token = os.environ.get(token_env, "").strip() or None
        return self._remote(kind, name, token_env, token)

    def _remote(self, kind: RepoType, name: str, token_env: str, token: str | None) -> CheckResult:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        api = HfApi(endpoint=self.endpoint)
        outcome = _bounded(
            lambda: api.auth_check(name, repo_type=kind, token=token or False), self.timeout_s
        )
        url = _repo_url(kind, name)
        if outcome is None:
            status: Status = "passed"
            message = f"{name} is accessible" + (f" with {token_env}" if token else "")
        elif isinstance(outcome, GatedRepoError):
            status, message = "failed", _gated_message(name, url, token_env, token)
        elif isinstance(outcome, RepositoryNotFoundError):
            status = "failed"
            message = f"{name} is not on the Hugging Face Hub: check job.{kind}"
            if token is None:
                message += f" (if it is private or gated, export {token_env})"
        elif isinstance(outcome, HfHubHTTPError) and _status_code(outcome) in (401, 403):
            status = "failed"
            message = (
                f"the Hub rejected the token in {token_env}: make a read token at {TOKENS_URL}"
            )
        else:
            status = "skipped"
            reason = "timed out" if isinstance(outcome, TimeoutError) else type(outcome).__name__
            message = f"SKIPPED, not passed: could not reach the Hugging Face Hub ({reason})"
        return CheckResult(check=kind, status=status, message=_without(message, token))


def _gated_message(name: str, url: str, token_env: str, token: str | None) -> str:
    if token is None:
        return (
            f"{name} is gated and {token_env} is not set: accept its terms at {url}, then "
            f"export {token_env}=<a read token from {TOKENS_URL}>"
        )
    return (
        f"{name} is gated and the token in {token_env} has no access yet: accept its terms at "
        f"{url} with the account that owns the token"
    )


def _bounded(call: Callable[[], object], timeout_s: float) -> BaseException | None:
    """Run `call` in a daemon thread; its exception, TimeoutError after `timeout_s`, or None.
    A hung request is abandoned with its thread, never waited for at exit."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except Exception as exc:  # the hub client's transport errors have no common base of ours
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else TimeoutError(f"no answer within {timeout_s:g}s")


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(_LOCAL_SUFFIXES)


def _repo_url(kind: RepoType, name: str) -> str:
    return f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{name}"


def _without(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
