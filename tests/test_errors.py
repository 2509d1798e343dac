"""Every exception class of the queue core, the jobs package, the operator commands and sae
derives from its package's one base, whose `retryable` attribute the stages check by type (read
from the source: importing every module of `sae` would import torch)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from jobs.errors import JobsError
from ops.errors import OpsError
from queue_app.errors import QueueError
from sae.errors import SAEError

ROOT = Path(__file__).resolve().parents[1]
BASES = {"queue_app": QueueError, "jobs": JobsError, "ops": OpsError, "sae": SAEError}
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _exception_classes(package: str) -> list[tuple[str, list[str]]]:
    """(module:class, base names) of each public class that names a built-in exception or one
    of ours as a base."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
            if any(
                b in BUILTIN_EXCEPTIONS or b.endswith(("Error", "Refused", "Lost", "Failed"))
                for b in bases
            ):
                found.append((f"{path.relative_to(ROOT)}:{node.name}", bases))
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_only_the_package_base_derives_from_a_builtin_exception(package: str) -> None:
    base = BASES[package].__name__
    classes = _exception_classes(package)
    assert classes, f"no exception classes found in {package}"
    strays = [
        where
        for where, bases in classes
        if not where.endswith(f":{base}") and all(b in BUILTIN_EXCEPTIONS for b in bases)
    ]
    assert strays == [], f"derive these from {base}"


@pytest.mark.parametrize("base", list(BASES.values()))
def test_each_base_says_whether_retrying_helps(base: type[Exception]) -> None:
    assert base.retryable is False
