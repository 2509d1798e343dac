"""AWS failures mapped onto our provider errors (jobs.providers.errors), at the one boundary
that calls boto3, and the botocore client configuration that retries throttling and transient
faults with backoff before any of them reaches us.

Error codes are EC2's (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
Messages carry the operation, the code and AWS's message: never a credential (boto3 puts none
in them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from jobs.providers.errors import (
    AuthError,
    CapacityError,
    InvalidRequest,
    NotFound,
    PermanentProviderError,
    ProviderError,
    QuotaError,
    RateLimited,
)

T = TypeVar("T")

CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
        "Blocked",
        "UnrecognizedClientException",
    }
)
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
QUOTA_CODES = frozenset({"VcpuLimitExceeded", "InstanceLimitExceeded"})
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "Unavailable"})

CREDENTIALS_HELP = (
    "no AWS credentials found: configure boto3's chain (AWS_PROFILE with `aws configure` or "
    "`aws sso login`, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role)"
)


def client_config(max_attempts: int = 8) -> Config:
    """botocore retries throttling (RequestLimitExceeded...), 5xx and connection errors with
    exponential backoff and jitter ("standard" mode); what is left reaches `aws_errors`."""
    return Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="saefleet",
    )


_BY_CODE: list[tuple[frozenset[str], type[ProviderError], str]] = [
    (CAPACITY_CODES, CapacityError, ""),
    (AUTH_CODES, AuthError, " (check the IAM policy in docs/operations.md)"),
    (THROTTLE_CODES, RateLimited, ""),
    (QUOTA_CODES, QuotaError, " (ask AWS for a higher quota of this type)"),
    (NOT_FOUND_CODES, NotFound, ""),
    (TRANSIENT_CODES, ProviderError, ""),
]


def map_client_error(exc: ClientError, operation: str) -> ProviderError:
    """Our error for an AWS error reply."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = f"AWS {operation}: {code}: {error.get('Message', '')}".rstrip(": ")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400) or 400)
    for codes, error_type, hint in _BY_CODE:
        if code in codes:
            return error_type(message + hint)
    if code.endswith(".NotFound"):
        return NotFound(message)
    if status >= 500:
        return ProviderError(message)
    if code.startswith(("Invalid", "Unsupported", "MissingParameter")):
        return InvalidRequest(message)
    return PermanentProviderError(message)


def map_error(exc: Exception, operation: str) -> ProviderError:
    """Our error for anything boto3 raised."""
    if isinstance(exc, ClientError):
        return map_client_error(exc, operation)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AuthError(CREDENTIALS_HELP)
    if isinstance(exc, BotoCoreError):
        return ProviderError(f"AWS {operation}: {type(exc).__name__}: {exc}")
    raise TypeError(f"not a boto3 error: {type(exc).__name__}")


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Run boto3 calls, raising our errors instead of boto3's."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise map_error(exc, operation) from None


def call(operation: str, fn: Callable[[], T]) -> T:
    """`fn()` with boto3's errors mapped."""
    with aws_errors(operation):
        return fn()
