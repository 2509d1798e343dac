"""LambdaCloud's client: error mapping, retries, secrecy of the key and configuration (through
httpx.MockTransport, and real HTTP to the fake API where the key could leak)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from jobs.providers import (
    AuthError,
    CapacityError,
    InvalidRequest,
    NotFound,
    ProviderError,
    QuotaError,
    RateLimited,
)
from jobs.providers.lambda_api import RetryPolicy
from jobs.providers.lambda_cloud import LambdaCloud, from_settings
from queue_app.processes import free_port
from queue_app.settings import Settings
from tests.jobs.providers.lambda_mocks import (
    BASE,
    KEY,
    PUBLIC_KEY,
    Sleeps,
    data,
    error,
    fake_cloud,
    mock_cloud,
    no_pacing,
    request,
)
from tests.support.fake_lambda import FakeLambda, running_fake_lambda

# ---- error mapping -----------------------------------------------------------------------------

ERROR_CODES = [
    (401, "global/invalid-api-key", AuthError, False),
    (403, "global/account-inactive", AuthError, False),
    (400, "global/invalid-parameters", InvalidRequest, False),
    (404, "global/object-does-not-exist", NotFound, False),
    (400, "global/quota-exceeded", QuotaError, False),
    (400, "instance-operations/launch/insufficient-capacity", CapacityError, False),
    (400, "instance-operations/launch/file-system-in-wrong-region", InvalidRequest, False),
    (400, "ssh-keys/key-in-use", InvalidRequest, False),
    (500, "global/unknown", ProviderError, True),
    (400, "some/new-code", InvalidRequest, False),
    (503, "some/new-code", ProviderError, True),
]


@pytest.mark.parametrize(("status", "code", "kind", "retried"), ERROR_CODES)
def test_error_codes_map_to_our_errors_and_only_transient_ones_are_retried(
    status: int, code: str, kind: type[ProviderError], retried: bool
) -> None:
    calls: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return error(status, code, message="the parameter region_name is bad")

    cloud = mock_cloud(handler, max_attempts=3)
    with pytest.raises(ProviderError) as caught:
        cloud.instance_types()
    assert type(caught.value) is kind
    assert code in str(caught.value)
    assert len(calls) == (3 if retried else 1)
    assert caught.value.retryable == retried or kind is CapacityError


def test_invalid_request_names_the_parameter_and_auth_error_says_what_to_do() -> None:
    cloud = mock_cloud(lambda r: error(400, "global/invalid-parameters", "Invalid region_name"))
    with pytest.raises(InvalidRequest, match="region_name"):
        cloud.get("i-1")
    cloud = mock_cloud(lambda r: error(401, "global/invalid-api-key", "API key was invalid"))
    with pytest.raises(AuthError, match="LAMBDA_API_KEY"):
        cloud.get("i-1")


def test_capacity_error_is_raised_at_once_for_the_caller_to_fail_over() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        if req.url.path.endswith("/ssh-keys"):
            return data([{"id": "k1", "name": "saefleet", "public_key": PUBLIC_KEY}])
        if req.url.path.endswith("/instances"):
            return data([])
        return error(400, "instance-operations/launch/insufficient-capacity")

    sleeps = Sleeps()
    with pytest.raises(CapacityError):
        mock_cloud(handler, sleeps).launch(request())
    assert calls.count("POST /api/v1/instance-operations/launch") == 1
    assert sleeps == []


# ---- retries -----------------------------------------------------------------------------------


def test_429_waits_at_least_retry_after_then_succeeds() -> None:
    replies = iter([error(429, "global/rate-limited", **{"Retry-After": "7"}), data({})])
    sleeps = Sleeps()
    assert mock_cloud(lambda r: next(replies), sleeps).instance_types() == []
    assert len(sleeps) == 1
    assert 7 <= sleeps[0] <= 8


def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    replies = iter([httpx.Response(429, headers={"Retry-After": when}), data({})])
    sleeps = Sleeps()
    mock_cloud(lambda r: next(replies), sleeps, max_total_s=60).instance_types()
    assert 18 <= sleeps[0] <= 21


def test_a_retry_after_beyond_the_time_budget_gives_up_without_sleeping() -> None:
    sleeps = Sleeps()
    reply = error(429, "global/rate-limited", **{"Retry-After": "300"})
    with pytest.raises(RateLimited) as caught:
        mock_cloud(lambda r: reply, sleeps, max_total_s=45).instance_types()
    assert caught.value.retry_after == 300
    assert sleeps == []


def test_500_then_success_backs_off_exponentially_with_jitter() -> None:
    replies = iter([error(500, "global/unknown"), error(502, "global/unknown"), data({})])
    sleeps = Sleeps()
    mock_cloud(lambda r: next(replies), sleeps).instance_types()
    assert len(sleeps) == 2
    assert 1 <= sleeps[0] <= 2  # 1 s + up to 1 s jitter
    assert 2 <= sleeps[1] <= 3  # 2 s + up to 1 s jitter


def test_attempts_are_bounded() -> None:
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return error(500, "global/unknown")

    sleeps = Sleeps()
    with pytest.raises(ProviderError):
        mock_cloud(handler, sleeps).instance_types()
    assert len(calls) == RetryPolicy().max_attempts == 5
    assert len(sleeps) == 4
    assert max(sleeps) <= RetryPolicy().backoff_max_s + RetryPolicy().jitter_s


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, text="<html>502 Bad Gateway</html>"),
        httpx.Response(200, json={"no": "envelope"}),
        httpx.Response(200, json={"data": {"gpu_1x_a100": {"instance_type": {"name": 5}}}}),
        httpx.Response(502, text="Bad Gateway"),
    ],
    ids=["not-json", "no-envelope", "wrong-schema", "5xx-not-json"],
)
def test_malformed_replies_are_transient_errors(reply: httpx.Response) -> None:
    replies = iter([reply, data({})])
    assert mock_cloud(lambda r: next(replies)).instance_types() == []
    with pytest.raises(ProviderError, match=r"malformed|HTTP 502"):
        mock_cloud(lambda r: reply, max_attempts=1).instance_types()


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("timed out"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("x")],
)
def test_transport_failures_become_provider_errors(failure: httpx.HTTPError) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(ProviderError) as caught:
        mock_cloud(handler, max_attempts=2).get("i-1")
    assert type(caught.value) is ProviderError
    assert caught.value.__cause__ is None and caught.value.__context__ is not None
    assert not isinstance(caught.value, httpx.HTTPError)


# ---- the key stays secret ----------------------------------------------------------------------


def test_the_api_key_never_appears_in_logs_errors_or_reprs(
    fake_lambda: FakeLambda, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_lambda.fail(count=2)
    fake_lambda.rate_limit(retry_after=0.05)
    fake_lambda.no_capacity(region="us-east-1")
    cloud = fake_cloud(fake_lambda)
    cloud.instance_types()
    wrong_key = LambdaCloud("x" + fake_lambda.api_key, fake_lambda.base_url, pacer=no_pacing())
    unreachable = LambdaCloud(
        fake_lambda.api_key,
        f"http://127.0.0.1:{free_port()}/api/v1",
        pacer=no_pacing(),
        retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01, jitter_s=0),
    )
    errors: list[BaseException] = []
    for call in (
        lambda: cloud.launch(request("sf-sec-1")),
        lambda: cloud.get("i-404"),
        wrong_key.list,
        unreachable.list,
    ):
        with pytest.raises(ProviderError) as caught:
            call()
        errors.append(caught.value)
    texts = [caplog.text, repr(cloud), str(vars(cloud)), repr(cloud._api._client.headers)]
    texts += [f"{e!s} {e!r} {e.args}" for e in errors]
    assert [type(e) for e in errors] == [CapacityError, NotFound, AuthError, ProviderError]
    assert all(fake_lambda.api_key not in text for text in texts)
    assert any("retry" in r.getMessage() for r in caplog.records)


def test_an_error_message_echoing_the_key_is_redacted() -> None:
    reply = error(400, "global/invalid-parameters", f"bad header Bearer {KEY}")
    with pytest.raises(InvalidRequest) as caught:
        mock_cloud(lambda r: reply).get("i-1")
    assert KEY not in str(caught.value) and "***" in str(caught.value)


# ---- configuration -----------------------------------------------------------------------------


def test_from_settings_reads_the_key_from_the_environment_or_a_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    with pytest.raises(AuthError, match="LAMBDA_API_KEY"):
        from_settings(Settings())
    key_file = tmp_path / "lambda.key"
    key_file.write_text(KEY + "\n")
    from_file = from_settings(Settings(lambda_api_key_file=key_file, lambda_base_url=BASE))
    assert from_file.base_url == BASE
    assert KEY not in repr(from_file)
    with pytest.raises(AuthError, match="cannot read"):
        from_settings(Settings(lambda_api_key_file=tmp_path / "missing"))
    with running_fake_lambda(api_key="from-env") as api:
        api.add_instance("sf-env-1")
        monkeypatch.setenv("LAMBDA_API_KEY", "from-env")
        unreadable = Settings(
            lambda_api_key_file=tmp_path / "missing", lambda_base_url=api.base_url
        )
        from_env = from_settings(unreadable)  # the environment wins: the file is never read
        assert [i.name for i in from_env.list()] == ["sf-env-1"]  # authenticated with its key


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(AuthError):
        LambdaCloud("  ")


def test_retry_waits_grow_and_are_capped() -> None:
    retry = RetryPolicy(jitter_s=0)
    assert [retry.wait_s(n, None) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 16, 16]
    assert retry.wait_s(1, RateLimited("x", retry_after=30)) == 30
    assert retry.wait_s(1, RateLimited("x", retry_after=600)) == retry.max_retry_after_s


def test_waiting_is_real_when_no_sleep_is_injected() -> None:
    started = time.monotonic()
    replies = iter([error(500, "global/unknown"), data({})])
    cloud = LambdaCloud(
        KEY,
        BASE,
        pacer=no_pacing(),
        retry=RetryPolicy(backoff_initial_s=0.2, jitter_s=0),
        transport=httpx.MockTransport(lambda r: next(replies)),
    )
    cloud.instance_types()
    assert time.monotonic() - started >= 0.2
