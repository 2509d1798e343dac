"""The operator commands' errors: one base, `OpsError`, whose message the CLI prints as it is.

OpsError                  retryable = False
├── BadInput              (ops.cli) what was typed is wrong: exit code 2
├── FlowerConfigError     (ops.flower) Flower must not start as configured
├── SweepTimeout          (ops.follow) the sweep did not finish in the time given
└── RemoteLogError        (ops.job_logs) an instance's worker log cannot be read over SSH
"""

from __future__ import annotations

from typing import ClassVar


class OpsError(Exception):
    """Base of the operator commands' errors."""

    retryable: ClassVar[bool] = False
    """Whether running the same command again may succeed."""
