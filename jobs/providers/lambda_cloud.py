"""Lambda Cloud (API v1) behind the `Provider` protocol.

Every HTTP exchange goes through `LambdaCloud._call`, the one place where httpx failures and the
API's `{"error": {"code", ...}}` envelope become our exceptions (branching on `code`, never on
`message`); no httpx exception leaves this module:

    httpx.TimeoutException, httpx.TransportError,    -> ProviderError (transient)
    HTTP 5xx, global/unknown, malformed JSON/schema
    HTTP 429 (any code)                              -> RateLimited(retry_after from Retry-After)
    instance-operations/launch/insufficient-capacity -> CapacityError (transient; the caller
                                                        moves on to the next region/type)
    global/invalid-api-key, global/account-inactive  -> AuthError
    global/quota-exceeded                            -> QuotaError
    global/invalid-parameters, file-system-in-wrong-region,
    ssh-keys/key-in-use, any other 4xx               -> InvalidRequest
    global/object-does-not-exist                     -> NotFound

`RetryPolicy` retries the transient ones except `CapacityError` (tenacity: exponential backoff
with jitter, Retry-After honoured, bounded attempts and total time); permanent errors raise at
once. Every request first takes a slot from a `Pacer` that all `LambdaCloud` objects of the
process share (about 1 request/s, launches 1 per 12 s and at most 5 a minute).

The API key lives only in the httpx client's Authorization header (httpx masks it in reprs);
messages we raise or log never contain it.
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from jobs.providers.base import (
    INSTANCE_NAME_PREFIX,
    Instance,
    InstanceStatus,
    InstanceType,
    LaunchRequest,
)
from jobs.providers.errors import (
    AuthError,
    CapacityError,
    InvalidRequest,
    NotFound,
    ProviderError,
    QuotaError,
    RateLimited,
)
from jobs.providers.pacing import Pacer, Rate

if TYPE_CHECKING:
    from queue_app.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
API_KEY_ENV = "LAMBDA_API_KEY"
SSH_USER = "ubuntu"
WORKDIR = "/home/ubuntu/saefleet"
MAX_NAME_LENGTH = 64
LAMBDA_RATES = {
    "request": Rate(min_interval_s=1.0),
    "launch": Rate(min_interval_s=12.0, max_per_window=5, window_s=60.0),
}
_shared_pacer = Pacer(LAMBDA_RATES)
os.register_at_fork(after_in_child=_shared_pacer.reset)

T = TypeVar("T")


def shared_pacer() -> Pacer:
    """The pacer every LambdaCloud of this process uses unless given its own."""
    return _shared_pacer


# ---- wire models: what the API returns ---------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Region(_Wire):
    name: str
    description: str = ""


class _Specs(_Wire):
    vcpus: int = 0
    memory_gib: int = 0
    storage_gib: int = 0
    gpus: int = 0


class _TypeInfo(_Wire):
    name: str
    description: str = ""
    gpu_description: str = ""
    price_cents_per_hour: int
    specs: _Specs = _Specs()


class _TypeOffer(_Wire):
    instance_type: _TypeInfo
    regions_with_capacity_available: list[_Region] = Field(default_factory=list)


class _InstanceWire(_Wire):
    id: str
    name: str | None = None
    ip: str | None = None
    status: InstanceStatus
    region: _Region
    instance_type: _TypeInfo
    ssh_key_names: list[str] = Field(default_factory=list)
    file_system_names: list[str] = Field(default_factory=list)


class _LaunchResult(_Wire):
    instance_ids: list[str] = Field(min_length=1)


class SSHKey(_Wire):
    """An SSH public key registered with the account."""

    id: str
    name: str
    public_key: str = ""


class FileSystem(_Wire):
    """A persistent filesystem; it lives in one region."""

    id: str
    name: str
    region: _Region
    mount_point: str | None = None


class _TerminatedRef(_Wire):
    id: str


class _TerminateResult(_Wire):
    terminated_instances: list[_TerminatedRef] = Field(default_factory=list)


class _ErrorBody(_Wire):
    code: str
    message: str = ""
    suggestion: str | None = None


class _ErrorEnvelope(_Wire):
    error: _ErrorBody


class _DataEnvelope(_Wire):
    data: Any


_TYPE_OFFERS = TypeAdapter(dict[str, _TypeOffer])
_INSTANCE = TypeAdapter(_InstanceWire)
_INSTANCES = TypeAdapter(list[_InstanceWire])
_LAUNCH_RESULT = TypeAdapter(_LaunchResult)
_TERMINATE_RESULT = TypeAdapter(_TerminateResult)
_SSH_KEY = TypeAdapter(SSHKey)
_SSH_KEYS = TypeAdapter(list[SSHKey])
_FILE_SYSTEMS = TypeAdapter(list[FileSystem])


# ---- retries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried (CapacityError and permanent errors never are)."""

    max_attempts: int = 5
    max_total_s: float = 45.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 16.0
    jitter_s: float = 1.0
    max_retry_after_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def wait_s(self, attempt: int, error: BaseException | None) -> float:
        """Seconds before retry number `attempt` (1-based): exponential backoff plus up to
        `jitter_s` of random jitter, and at least what a 429's Retry-After asked for."""
        backoff = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
        wait = backoff + random.uniform(0, self.jitter_s)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            wait = max(wait, min(error.retry_after, self.max_retry_after_s))
        return wait

    def run(self, fn: Callable[[], T], what: str) -> T:
        """Call `fn` until it succeeds, fails permanently, or the attempts/time run out."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=lambda state: self.wait_s(
                state.attempt_number, state.outcome.exception() if state.outcome else None
            ),
            stop=tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_before_delay(self.max_total_s),
            sleep=self.sleep,
            reraise=True,
            before_sleep=lambda state: _log_retry(what, state),
        )
        return retrying(fn)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable and not isinstance(exc, CapacityError)


def _log_retry(what: str, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "lambda: %s failed (%s); retry %d in %.1fs", what, error, state.attempt_number, wait
    )


# ---- the provider ------------------------------------------------------------------------------


class LambdaCloud:
    """Lambda Cloud API v1 client implementing `Provider`."""

    name = "lambda"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30,
        *,
        pacer: Pacer | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key.strip():
            raise AuthError(f"empty Lambda Cloud API key: set {API_KEY_ENV}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._pacer = pacer or shared_pacer()
        self._retry = retry or RetryPolicy()
        self._secret = SecretStr(api_key.strip())
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers={
                "Authorization": f"Bearer {self._secret.get_secret_value()}",
                "Accept": "application/json",
            },
            timeout=timeout,
            transport=transport,
        )
        self._registered_keys: set[str] = set()

    def __repr__(self) -> str:
        return f"LambdaCloud(base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LambdaCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- Provider --------------------------------------------------------------------------

    def instance_types(self) -> list[InstanceType]:
        offers = self._request(_TYPE_OFFERS, "GET", "instance-types")
        return [
            _instance_type(offer.instance_type, offer.regions_with_capacity_available)
            for offer in offers.values()
        ]

    def get(self, instance_id: str) -> Instance:
        return self._retry.run(lambda: self._get_once(instance_id), f"get instance {instance_id}")

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        return self._retry.run(lambda: self._list_once(include_foreign), "list instances")

    def launch(self, request: LaunchRequest) -> Instance:
        """Launch `request.name`, or return the instance that already carries that name.

        Each attempt looks the name up first; once the launch call returned an id, later
        attempts only read that id. A launch whose reply was lost (timeout, 5xx) therefore
        never starts a second instance: the next attempt finds the first one by name (launches
        are paced at least 12 s apart, time enough for it to be listed).
        """
        if len(request.name) > MAX_NAME_LENGTH:
            raise InvalidRequest(
                f"instance name {request.name!r} is longer than {MAX_NAME_LENGTH} characters"
            )
        self.ensure_ssh_key(request.ssh_key_name, request.ssh_public_key)
        body: dict[str, Any] = {
            "region_name": request.region,
            "instance_type_name": request.instance_type,
            "ssh_key_names": [request.ssh_key_name],
            "name": request.name,
            "quantity": 1,
        }
        if request.file_system:
            body["file_system_names"] = [request.file_system]
        launched: list[str] = []

        def attempt() -> Instance:
            if launched:
                return self._get_launched(launched[0])
            existing = self._find_by_name(request.name)
            if existing is not None:
                log.info("lambda: %s already exists as %s", request.name, existing.id)
                return existing
            data = self._call("POST", "instance-operations/launch", body, launch=True)
            launched.append(_parse(_LAUNCH_RESULT, data, "launch").instance_ids[0])
            log.info(
                "lambda: launched %s as %s (%s in %s)",
                request.name,
                launched[0],
                request.instance_type,
                request.region,
            )
            return self._get_launched(launched[0])

        return self._retry.run(attempt, f"launch {request.name}")

    def terminate(self, instance_id: str) -> None:
        """Terminate; an instance that is gone already (unknown, terminated) is success."""
        body = {"instance_ids": [instance_id]}
        try:
            self._request(_TERMINATE_RESULT, "POST", "instance-operations/terminate", body)
        except NotFound:
            log.info("lambda: %s is already gone", instance_id)
        except InvalidRequest:
            try:
                status = self.get(instance_id).status
            except NotFound:
                return
            if not status.gone:
                raise
        else:
            log.info("lambda: terminating %s", instance_id)

    # ---- beyond the protocol: keys and filesystems ----------------------------------------

    def ssh_keys(self) -> builtins.list[SSHKey]:
        """SSH keys of the account (also a cheap check that the API key works)."""
        return self._request(_SSH_KEYS, "GET", "ssh-keys")

    def ensure_ssh_key(self, name: str, public_key: str) -> None:
        """Register `public_key` as `name` unless the account has it already.

        InvalidRequest when `name` is taken by a different key (the fix is to delete that key
        at Lambda or choose another name): launching with it would lock us out of the instance.
        """
        if name in self._registered_keys:
            return

        def attempt() -> None:
            found = self._ssh_key_named(name)
            if found is None:
                body = {"name": name, "public_key": public_key.strip()}
                try:
                    _parse(_SSH_KEY, self._call("POST", "ssh-keys", body), "ssh-key")
                    log.info("lambda: registered SSH key %s", name)
                    return
                except InvalidRequest:  # taken meanwhile, by another process of the fleet?
                    found = self._ssh_key_named(name)
                    if found is None:
                        raise
            if not same_public_key(found.public_key, public_key):
                raise InvalidRequest(
                    f"Lambda already has an SSH key named {name!r} with a different public key: "
                    "delete it at Lambda (SSH keys page) or use another key name"
                )

        self._retry.run(attempt, f"register SSH key {name}")
        self._registered_keys.add(name)

    def file_systems(self) -> builtins.list[FileSystem]:
        return self._request(_FILE_SYSTEMS, "GET", "file-systems")

    def file_system_region(self, name: str) -> str:
        """The region of persistent filesystem `name`; NotFound when the account has none."""
        for fs in self.file_systems():
            if fs.name == name:
                return fs.region.name
        raise NotFound(f"Lambda has no filesystem named {name!r}: create it in the region to use")

    # ---- internals -------------------------------------------------------------------------

    def _get_once(self, instance_id: str) -> Instance:
        data = self._call("GET", f"instances/{instance_id}")
        return _instance(_parse(_INSTANCE, data, "instance"))

    def _get_launched(self, instance_id: str) -> Instance:
        try:
            return self._get_once(instance_id)
        except NotFound:
            raise ProviderError(f"launched instance {instance_id} is not listed yet") from None

    def _list_once(self, include_foreign: bool) -> builtins.list[Instance]:
        wires = _parse(_INSTANCES, self._call("GET", "instances"), "instances")
        instances = [_instance(w) for w in wires]
        if include_foreign:
            return instances
        return [i for i in instances if i.name.startswith(INSTANCE_NAME_PREFIX)]

    def _find_by_name(self, name: str) -> Instance | None:
        matches = [i for i in self._list_once(include_foreign=True) if i.name == name]
        matches.sort(key=lambda i: i.status.gone)
        return matches[0] if matches else None

    def _ssh_key_named(self, name: str) -> SSHKey | None:
        keys = _parse(_SSH_KEYS, self._call("GET", "ssh-keys"), "ssh-keys")
        return next((k for k in keys if k.name == name), None)

    def _request(
        self, reply: TypeAdapter[T], method: str, path: str, body: dict[str, Any] | None = None
    ) -> T:
        """One call, retried as a whole (parsing included) by the retry policy."""
        return self._retry.run(
            lambda: _parse(reply, self._call(method, path, body), path), f"{method} /{path}"
        )

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, launch: bool = False
    ) -> Any:
        """One paced HTTP exchange; returns the envelope's `data` or raises our error."""
        self._pacer.acquire(*(("request", "launch") if launch else ("request",)))
        where = f"Lambda API {method} /{path}"
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TimeoutException:
            raise ProviderError(f"{where}: no reply within {self.timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            text = self._redact(f"{type(exc).__name__}: {exc}")
            raise ProviderError(f"{where}: {text}") from None
        return self._data_or_error(response, where)

    def _data_or_error(self, response: httpx.Response, where: str) -> Any:
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if status == 429:
            retry_after = _retry_after_s(response.headers.get("Retry-After"))
            raise RateLimited(f"{where}: rate limited (HTTP 429)", retry_after=retry_after)
        if 200 <= status < 300:
            try:
                return _DataEnvelope.model_validate(payload).data
            except ValidationError:
                raise ProviderError(f"{where}: malformed reply (HTTP {status}, no data)") from None
        try:
            error = _ErrorEnvelope.model_validate(payload).error
        except ValidationError:
            raise _error_for_status(
                status, f"{where}: HTTP {status} without an error body"
            ) from None
        text = self._redact(f"{where}: {error.code}: {error.message}")
        if error.suggestion:
            text += f" ({self._redact(error.suggestion)})"
        raise _error_for_code(error.code, status, text)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret.get_secret_value(), "***")


# ---- mapping -----------------------------------------------------------------------------------

_ERRORS_BY_CODE: dict[str, type[ProviderError]] = {
    "global/invalid-api-key": AuthError,
    "global/account-inactive": AuthError,
    "global/invalid-parameters": InvalidRequest,
    "global/object-does-not-exist": NotFound,
    "global/quota-exceeded": QuotaError,
    "instance-operations/launch/insufficient-capacity": CapacityError,
    "instance-operations/launch/file-system-in-wrong-region": InvalidRequest,
    "ssh-keys/key-in-use": InvalidRequest,
    "global/unknown": ProviderError,
}
_FIXES: dict[type[ProviderError], str] = {
    AuthError: f"; check {API_KEY_ENV} or SAEFLEET_LAMBDA_API_KEY_FILE and the account's status",
    QuotaError: "; try another instance type or ask Lambda to raise the quota",
}


def _error_for_code(code: str, status: int, text: str) -> ProviderError:
    kind = _ERRORS_BY_CODE.get(code)
    if kind is None:
        return _error_for_status(status, text)
    return kind(text + _FIXES.get(kind, ""))


def _error_for_status(status: int, text: str) -> ProviderError:
    if status >= 500:
        return ProviderError(text)
    if status in (401, 403):
        return AuthError(text + _FIXES[AuthError])
    if status == 404:
        return NotFound(text)
    return InvalidRequest(text)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _parse(adapter: TypeAdapter[T], data: Any, what: str) -> T:
    """Validate a reply's `data`; a mismatch is a malformed reply (transient ProviderError)."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise ProviderError(
            f"Lambda API: malformed {what} reply ({where}: {first['msg']})"
        ) from None


_GPU_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*GB", re.IGNORECASE)


def gpu_memory_gb(*descriptions: str) -> float:
    """GPU memory per GPU from a description such as "1x A100 (40 GB SXM4)" (0 when absent)."""
    for text in descriptions:
        match = _GPU_MEMORY.search(text)
        if match:
            return float(match.group(1))
    return 0.0


def same_public_key(a: str, b: str) -> bool:
    """Two OpenSSH public key lines name the same key (type and base64; comments ignored)."""
    return a.split()[:2] == b.split()[:2]


def _instance_type(info: _TypeInfo, regions: list[_Region]) -> InstanceType:
    return InstanceType(
        name=info.name,
        description=info.description,
        gpu_description=info.gpu_description,
        gpu_count=info.specs.gpus,
        gpu_memory_gb=gpu_memory_gb(info.gpu_description, info.description, info.name),
        price_per_hour=info.price_cents_per_hour / 100,
        spot_price_per_hour=None,
        regions=sorted(r.name for r in regions),
    )


def _instance(wire: _InstanceWire) -> Instance:
    return Instance(
        id=wire.id,
        name=wire.name or "",
        status=wire.status,
        instance_type=wire.instance_type.name,
        region=wire.region.name,
        capacity="on_demand",
        price_per_hour=wire.instance_type.price_cents_per_hour / 100,
        host=wire.ip,
        ssh_user=SSH_USER,
        workdir=WORKDIR,
    )


# ---- construction from settings ----------------------------------------------------------------


def read_api_key(settings: Settings) -> str | None:
    """The API key from LAMBDA_API_KEY, else from SAEFLEET_LAMBDA_API_KEY_FILE; None if neither."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    path = settings.lambda_api_key_file
    if path is None:
        return None
    try:
        return path.expanduser().read_text().strip() or None
    except OSError as exc:
        raise AuthError(
            f"cannot read the Lambda API key file {path}: {exc.strerror or exc}"
        ) from None


def from_settings(settings: Settings) -> LambdaCloud:
    """A LambdaCloud configured from the environment; AuthError when no key is configured."""
    key = read_api_key(settings)
    if key is None:
        raise AuthError(
            f"no Lambda Cloud API key: set {API_KEY_ENV}, or SAEFLEET_LAMBDA_API_KEY_FILE to a "
            "file holding it (create a key in the Lambda Cloud dashboard, API keys page)"
        )
    return LambdaCloud(key, settings.lambda_base_url)
