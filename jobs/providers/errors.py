"""Provider errors: every provider maps its own failures (HTTP, processes) onto these.

ProviderError            transient: 5xx, timeouts, connection errors, malformed replies
├── CapacityError        transient: no capacity for this type/region now; try the next one
├── RateLimited          transient: slow down (retry_after seconds when the API says)
└── PermanentProviderError   do not retry
    ├── AuthError        the API key is invalid or the account inactive
    ├── QuotaError       the account may not launch more of this type
    ├── InvalidRequest   a parameter is wrong (names it)
    └── NotFound         no such instance (for terminate: already gone)
"""

from __future__ import annotations


class ProviderError(Exception):
    """A provider call failed in a way that may succeed if retried."""

    transient = True


class CapacityError(ProviderError):
    """No capacity for the requested instance type in the requested region."""


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Retrying will not help; the message says what to fix."""

    transient = False


class AuthError(PermanentProviderError):
    pass


class QuotaError(PermanentProviderError):
    pass


class InvalidRequest(PermanentProviderError):
    pass


class NotFound(PermanentProviderError):
    pass
