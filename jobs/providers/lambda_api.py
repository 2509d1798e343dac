"""Talking to the Lambda Cloud API v1: paced HTTP exchanges, their failures mapped to our
errors, and the retry policy for transient ones.

`LambdaAPI.call` is the one place where httpx failures and the API's
`{"error": {"code", ...}}` envelope become our exceptions (branching on `code`, never on
`message`); no httpx exception leaves it:

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
once. Every request first takes a slot from a `Pacer` that all clients of the process share
(about 1 request/s, launches 1 per 12 s and at most 5 a minute).

The API key lives only in the httpx client's Authorization header (httpx masks it in reprs);
messages we raise or log never contain it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import tenacity
from pydantic import SecretStr, ValidationError

from jobs.providers.errors import (
    AuthError,
    CapacityError,
    InvalidRequest,
    NotFound,
    ProviderError,
    QuotaError,
    RateLimited,
)
from jobs.providers.lambda_wire import DataEnvelope, ErrorEnvelope
from jobs.providers.pacing import Pacer, Rate

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
API_KEY_ENV = "LAMBDA_API_KEY"
LAMBDA_RATES = {
    "request": Rate(min_interval_s=1.0),
    "launch": Rate(min_interval_s=12.0, max_per_window=5, window_s=60.0),
}
_shared_pacer = Pacer(LAMBDA_RATES)
os.register_at_fork(after_in_child=_shared_pacer.reset)

T = TypeVar("T")


def shared_pacer() -> Pacer:
    """The pacer every client of this process uses unless given its own."""
    return _shared_pacer


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


# ---- one exchange ------------------------------------------------------------------------------


class LambdaAPI:
    """An authenticated, paced HTTP client of the API; `call` returns a reply's `data`."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        timeout: float,
        pacer: Pacer,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key.strip():
            raise AuthError(f"empty Lambda Cloud API key: set {API_KEY_ENV}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._pacer = pacer
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

    def __repr__(self) -> str:
        return f"LambdaAPI(base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def call(
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
                return DataEnvelope.model_validate(payload).data
            except ValidationError:
                raise ProviderError(f"{where}: malformed reply (HTTP {status}, no data)") from None
        try:
            error = ErrorEnvelope.model_validate(payload).error
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
