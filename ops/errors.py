"""The operator commands' errors: one base, `OpsError`, whose message the CLI prints as it is.

OpsError                  retryable = False
├── BadInput              what was typed is wrong: exit code 2
├── FlowerConfigError     (ops.flower) Flower must not start as configured
├── SweepTimeout          (ops.follow) the sweep did not finish in the time given
├── RemoteLogError        (ops.job_logs) an instance's worker log cannot be read over SSH
├── PublishRefused        (ops.publish) a publish target or sweep that cannot be used: exit 2
└── PublishFailed         (ops.publish) copying failed part-way, or the store's SAEs do not verify
"""

from __future__ import annotations

from typing import ClassVar


class OpsError(Exception):
    """Base of the operator commands' errors."""

    retryable: ClassVar[bool] = False
    """Whether running the same command again may succeed."""


class BadInput(OpsError):
    """What was typed is wrong: exit code 2 with this message."""


class PublishRefused(OpsError):
    """`sweep publish` refused before copying anything (target exists, unknown scheme, missing
    bucket or token, unfinished sweep): exit code 2."""


class PublishFailed(OpsError):
    """`sweep publish` could not finish: the store's final SAEs do not verify, or the target
    failed while being written (exit code 1; running it again with --force may succeed)."""

    retryable = True
