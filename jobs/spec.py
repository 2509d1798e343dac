"""Sweep files: a sweep file (YAML) validated into `SweepSpec`, expanded into one
`queue_app.jobspec.JobSpec` per grid point (the job models live in the queue core, because the
job records hold them).

Validation happens once, here, at the edge; a bad file raises `SpecError` whose message names
the field and the problem, before anything is written anywhere.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from jobs.catalog import CATALOGS
from jobs.errors import JobsError
from queue_app.jobspec import JobConfig, JobSpec, ProviderSpec, SpecModel, TrackingSpec

M = TypeVar("M", bound=BaseModel)

MAX_JOBS_PER_SWEEP = 1000
MAX_PACK_SIZE = 64
MAX_SPEC_BYTES = 1 << 20
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 32
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")


class SpecError(JobsError, ValueError):
    """A sweep file or spec is invalid; the message says where and why."""


class SweepSpec(SpecModel):
    """A sweep file: a base job and a grid of overrides."""

    name: str = Field(..., description="Letters, digits, '.', '_' and '-' (at most 48).")
    provider: ProviderSpec = ProviderSpec()
    budget_usd: float | None = Field(None, gt=0, description="Spend limit for the whole sweep.")
    tracking: TrackingSpec | None = Field(
        None, description="W&B tracking of every job (a job's own `tracking` wins)."
    )
    job: dict[str, Any] = Field(..., description="The base job (see JobConfig).")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted path into `job` -> values to sweep."
    )
    max_pack_size: int = Field(
        8,
        ge=1,
        le=MAX_PACK_SIZE,
        description="Most jobs that share one activation stream on one instance (1: no packing).",
    )
    pack_all: bool = Field(
        False, description="Every job in one pack; refused when they cannot share a stream."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be 1-48 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = 1
        for path, values in grid.items():
            if not values:
                raise ValueError(f"grid.{path}: needs at least one value")
            size *= len(values)
            if size > MAX_JOBS_PER_SWEEP:
                raise ValueError(f"expands to more than {MAX_JOBS_PER_SWEEP} jobs; split the sweep")
        return grid

    def expand(self) -> list[JobSpec]:
        """One validated JobSpec per grid point, in grid order."""
        paths = list(self.grid)
        jobs = []
        for index, values in enumerate(itertools.product(*self.grid.values())):
            overrides = dict(zip(paths, values, strict=True))
            raw = copy.deepcopy(self.job)
            if self.tracking is not None:
                raw.setdefault("tracking", self.tracking.model_dump(exclude_unset=True))
            for path, value in overrides.items():
                set_path(raw, path, value)
            config = _validate(JobConfig, raw, "job", overrides)
            name = ",".join(f"{p}={v}" for p, v in overrides.items()) or self.name
            jobs.append(
                JobSpec(
                    index=index,
                    name=name,
                    overrides=overrides,
                    config=config,
                    provider=self.provider,
                )
            )
        return jobs


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set the dotted `path` ("sae.k") in a raw job to `value`, making sections on the way."""
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"grid.{path}: job.{part} is not a section")
        node = child
    node[parts[-1]] = value


def _validate(model: type[M], raw: Any, where: str, overrides: dict[str, Any] | None = None) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, where, overrides)) from None


def format_validation_error(
    exc: ValidationError, where: str = "", overrides: dict[str, Any] | None = None
) -> str:
    """One line per problem: `field.path: message (got value)`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
        message = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            got = f" (got {_short(err['input'])})"
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{loc or 'sweep'}: {message}{got}")
    if overrides:
        point = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        lines.append(f"(grid point: {point})")
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- YAML -------------------------------------------------------------------------------------


def _check_size(value: Any, limit: int = MAX_YAML_NODES, depth: int = MAX_YAML_DEPTH) -> None:
    """Refuse documents whose values, with YAML aliases expanded, exceed `limit` (alias bombs
    load cheaply because PyYAML shares aliased objects, but would explode when used), or that
    nest deeper than `depth` (validating and printing them would recurse that deep)."""
    seen = 0
    stack = [(value, 0)]
    while stack:
        node, level = stack.pop()
        seen += 1
        if seen > limit:
            raise SpecError(
                f"sweep file expands to more than {limit} values (YAML aliases expanding?)"
            )
        if level > depth:
            raise SpecError(f"sweep file nests deeper than {depth} levels")
        if isinstance(node, dict):
            stack.extend((child, level + 1) for child in node)
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)


def parse_sweep_text(text: str, source: str = "sweep file") -> SweepSpec:
    """Validate YAML text into a SweepSpec (its `expand()` validates each grid point)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:  # the parser recurses once per nesting level
        raise SpecError(f"{source}: nests deeper than {MAX_YAML_DEPTH} levels") from None
    _check_size(raw)
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    spec = _validate(SweepSpec, raw, "")
    check_catalog_types(spec.provider)
    return spec


def check_catalog_types(provider: ProviderSpec) -> None:
    """AWS types must be ones the catalog prices (the live checks of regions are preflight's)."""
    if provider.name != "aws":
        return
    known = [e.name for e in CATALOGS["aws"].entries]
    unknown = [t for t in provider.instance_types or [] if t not in known]
    if unknown:
        raise SpecError(
            f"provider.instance_types: {', '.join(unknown)} not an AWS GPU type saefleet knows "
            f"(known: {', '.join(known)})"
        )


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; SpecError names the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {size} bytes is too large for a sweep file")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    return parse_sweep_text(text, str(path))
