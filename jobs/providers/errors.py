"""Provider errors: every provider maps its own failures (HTTP, processes) onto these
(part of the jobs error tree, jobs.errors).

ProviderError            retryable: 5xx, timeouts, connection errors, malformed replies
├── CapacityError        retryable: no capacity for this type/region now; try the next one
├── RateLimited          retryable: slow down (retry_after seconds when the API says)
└── PermanentProviderError   not retryable
    ├── AuthError        the API key is invalid or the account inactive
    ├── QuotaError       the account may not launch more of this type
    ├── InvalidRequest   a parameter is wrong (names it)
    └── NotFound         no such instance (for terminate: already gone)
"""

from __future__ import annotations

from jobs.errors import JobsError


class ProviderError(JobsError):
    """A provider call failed in a way that may succeed if retried."""

    retryable = True


class CapacityError(ProviderError):
    """No capacity for the requested instance type in the requested region."""


class RateLimited(ProviderError):
    """The API asks us to slow down."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Retrying will not help; the message says what to fix."""

    retryable = False


class AuthError(PermanentProviderError):
    """The API key is invalid or the account inactive."""


class QuotaError(PermanentProviderError):
    """The account may not launch more of this instance type."""


class InvalidRequest(PermanentProviderError):
    """A request parameter is wrong; the message names it."""


class NotFound(PermanentProviderError):
    """No such instance (for terminate: already gone)."""
