"""The jobs package's errors: one base, `JobsError`, whose `retryable` class attribute tells a
stage (jobs.stage_base) whether to retry the error with backoff or to fail the job. httpx,
paramiko, socket and SFTP exceptions are mapped onto these at the boundary (jobs.providers,
jobs.ssh) and nowhere else. The stage errors are defined here; the others next to what raises
them.

JobsError                      retryable = False unless marked
├── StageFailed                the stage cannot succeed; the message becomes the job's reason
├── InstanceLost               the instance is gone without our asking: a preemption
├── OutOfGPUMemory             out of GPU memory at the smallest micro-batch: the next attempt
│                              takes a larger GPU type (jobs.oom), or the job fails
├── CheckpointNotKept          (jobs.checkpoint_pull) a finished segment's checkpoint cannot be kept
├── ProviderError              (jobs.providers.errors) retryable: 5xx, timeouts, malformed replies
│   ├── CapacityError          retryable: no capacity for this type/region now
│   ├── RateLimited            retryable: slow down (retry_after seconds when the API says)
│   └── PermanentProviderError AuthError, QuotaError, InvalidRequest, NotFound
├── SSHError                   (jobs.ssh)
│   ├── SSHConnectError        retryable: refused, timeout, reset, connection lost
│   ├── CommandTimeout         retryable: a command ran past its timeout
│   └── SSHAuthError, HostKeyMismatch, CommandFailed, RemotePathError
├── SpecError                  (jobs.spec) a sweep file or spec is invalid (also a ValueError)
├── SubmitRefused              (jobs.submission) over budget, or a preflight check failed
├── BundleError                (jobs.bundle) the code bundle cannot be built
└── StoreError                 (jobs.objectstore) retryable: the store failed a call
    └── StoreConfigError       the store URL or its bucket is unusable (missing, denied)
"""

from __future__ import annotations

from typing import ClassVar


class JobsError(Exception):
    """Base of the jobs package's errors."""

    retryable: ClassVar[bool] = False
    """Whether the same call may succeed if made again (a stage retries it with backoff)."""


class StageFailed(JobsError):
    """The stage cannot succeed; the message becomes the job's recorded reason."""


class InstanceLost(JobsError):
    """The instance is gone or unreachable for good without our asking: a preemption."""


class OutOfGPUMemory(JobsError):
    """Training ran out of GPU memory at its smallest micro-batch. Retrying on this instance
    cannot help, so it is not `retryable` here; the job is retried as a new attempt on a
    type with more GPU memory (jobs.oom), and fails only when no such type is allowed."""
