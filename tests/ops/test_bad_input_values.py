"""Bad values in a sweep file (fuzzed): wrong types, unknown fields, numbers out of range,
empty and huge grids: exit 2 naming the field, nothing written."""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from jobs.spec import (
    MAX_JOBS_PER_SWEEP,
    SweepSpec,
    load_sweep_file,
)
from jobs.submission import check_submission
from queue_app.jobspec import JobConfig
from queue_app.settings import Settings
from queue_app.store import Store
from tests.ops.bad_input import (
    FUZZ,
    INT64_MAX,
    TEXT,
    assert_refused,
    run_saefleet,
    submit,
    with_value,
)


def test_the_base_sweep_is_accepted_and_would_be_written(
    base: dict[str, Any], sweep_file: Path, settings: Settings, store: Store
) -> None:
    """The control case: without a fault, the same path checks and writes the sweep."""
    sweep_file.write_text(yaml.safe_dump(base))
    spec = load_sweep_file(sweep_file)
    assert len(spec.expand()) == 2
    check_submission(spec, settings)
    proc = run_saefleet(settings, "sweep", "submit", str(sweep_file), "--json")
    assert proc.returncode == 0, proc.stderr
    assert store.r.dbsize() > 0  # so "nothing written" below is a real check


# ---- the fields, read from the models themselves -------------------------------------------------


@dataclass(frozen=True)
class NumberField:
    path: str  # as the error names it: job.train.lr
    kind: type  # int or float
    low: Any  # the Gt/Ge constraint, or None
    high: Any  # the Lt/Le constraint, or None


def number_fields(model: type[BaseModel], prefix: str) -> list[NumberField]:
    found = []
    for name, field in model.model_fields.items():
        options = typing.get_args(field.annotation) or (field.annotation,)
        nested = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
        if nested:
            found += number_fields(nested[0], f"{prefix}{name}.")
            continue
        kinds = [o for o in options if o in (int, float)]
        if kinds:
            low = [
                m for m in field.metadata if isinstance(m, annotated_types.Gt | annotated_types.Ge)
            ]
            high = [
                m for m in field.metadata if isinstance(m, annotated_types.Lt | annotated_types.Le)
            ]
            found.append(
                NumberField(
                    f"{prefix}{name}", kinds[0], low[0] if low else None, high[0] if high else None
                )
            )
    return found


NUMBERS = number_fields(SweepSpec, "") + number_fields(JobConfig, "job.")
BOUNDED_BELOW = [f for f in NUMBERS if f.low is not None]
TYPED_FIELDS: dict[str, str] = {  # a sample of every kind of field: path -> kind
    "name": "str",
    "budget_usd": "float",
    "provider": "section",
    "provider.name": "choice",
    "provider.price_per_hour": "float",
    "job": "section",
    "job.model": "str",
    "job.layer": "int",
    "job.dataset": "str",
    "job.sae": "section",
    "job.sae.k": "int",
    "job.sae.n_latents": "int",
    "job.sae.kind": "choice",
    "job.train": "section",
    "job.train.total_tokens": "int",
    "job.train.lr": "float",
    "job.train.dtype": "choice",
    "job.gpu.require_gpu": "bool",
    "job.segment_minutes": "float",
    "job.max_attempts": "int",
    "job.capacity": "choice",
    "grid": "section",
}
_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzXYZ", min_size=1, max_size=12)
_LOOKS_BOOLEAN = {"y", "yes", "n", "no", "on", "off", "t", "f", "true", "false"}
_LOOKS_NUMERIC = {"inf", "infinity", "nan"}


def wrong_value(kind: str) -> st.SearchStrategy[Any]:
    """Values of a type the field of `kind` does not take (pydantic's lax coercions aside)."""
    containers = st.lists(st.integers(), min_size=1, max_size=3) | st.dictionaries(
        _WORDS, st.integers(), min_size=1, max_size=2
    )
    if kind in ("int", "float"):
        words = _WORDS.filter(lambda w: w.lower() not in _LOOKS_NUMERIC)
        fractions = st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda x: not x.is_integer()
        )
        return words | containers | (fractions if kind == "int" else st.nothing())
    if kind in ("str", "choice"):
        return st.integers() | st.floats(allow_nan=False) | containers
    if kind == "bool":
        return _WORDS.filter(lambda w: w.lower() not in _LOOKS_BOOLEAN) | containers
    return _WORDS | st.integers() | st.lists(st.integers(), min_size=1, max_size=3)


@st.composite
def wrong_types(draw: st.DrawFn) -> tuple[str, Any]:
    path = draw(st.sampled_from(sorted(TYPED_FIELDS)))
    return path, draw(wrong_value(TYPED_FIELDS[path]))


@FUZZ
@given(fault=wrong_types())
def test_wrong_types(
    fault: tuple[str, Any], base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    path, value = fault
    assert_refused(submit(sweep_file, with_value(base, path, value)), store, f"{path}: ")


SECTIONS: dict[str, type[BaseModel]] = {
    "": SweepSpec,
    "provider": SweepSpec.model_fields["provider"].annotation,  # type: ignore[dict-item]
    "job": JobConfig,
    "job.sae": JobConfig.model_fields["sae"].annotation,  # type: ignore[dict-item]
    "job.train": JobConfig.model_fields["train"].annotation,  # type: ignore[dict-item]
    "job.early_stop": JobConfig.model_fields["early_stop"].annotation,  # type: ignore[dict-item]
    "job.gpu": JobConfig.model_fields["gpu"].annotation,  # type: ignore[dict-item]
}
# Printable text: line and paragraph separators would split the one message into lines.
_KEYS = st.text(alphabet=TEXT, min_size=1, max_size=20).filter(
    lambda k: k.strip() == k and k != "<<"
)


@FUZZ
@given(section=st.sampled_from(sorted(SECTIONS)), key=_KEYS)
def test_unknown_fields(
    section: str, key: str, base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    if key in SECTIONS[section].model_fields:
        return
    document = copy.deepcopy(base)
    node = document
    for part in filter(None, section.split(".")):
        node = node.setdefault(part, {})
    node[key] = 1
    where = f"{section}.{key}" if section else key
    assert_refused(submit(sweep_file, document), store, f"{where}: unknown field")


@st.composite
def below_bounds(draw: st.DrawFn) -> tuple[NumberField, float]:
    field = draw(st.sampled_from(BOUNDED_BELOW))
    limit = field.low.gt if isinstance(field.low, annotated_types.Gt) else field.low.ge
    strict = isinstance(field.low, annotated_types.Ge)
    if field.kind is int:
        value = draw(st.integers(-INT64_MAX, limit - 1 if strict else limit))
    else:
        value = draw(st.floats(-1e300, limit, exclude_max=strict))
    return field, value


@FUZZ
@given(fault=below_bounds())
def test_negative_and_too_small_numbers(
    fault: tuple[NumberField, float], base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    field, value = fault
    outcome = submit(sweep_file, with_value(base, field.path, value))
    assert_refused(outcome, store, f"{field.path}: Input should be greater than")


@st.composite
def huge_numbers(draw: st.DrawFn) -> tuple[NumberField, Any]:
    field = draw(st.sampled_from(NUMBERS))
    if field.kind is float:
        return field, draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    beyond_64_bits = st.integers(min_value=INT64_MAX + 1) | st.integers(max_value=-INT64_MAX - 1)
    if field.high is not None:
        limit = field.high.lt if isinstance(field.high, annotated_types.Lt) else field.high.le + 1
        return field, draw(beyond_64_bits | st.integers(limit, INT64_MAX))
    return field, draw(beyond_64_bits)


@FUZZ
@given(fault=huge_numbers())
def test_huge_and_non_finite_numbers(
    fault: tuple[NumberField, Any], base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    field, value = fault
    assert_refused(
        submit(sweep_file, with_value(base, field.path, value)), store, f"{field.path}: "
    )


@FUZZ
@given(
    grid=st.dictionaries(
        st.sampled_from(["sae.k", "train.lr", "train.seed", "layer"]),
        st.lists(st.integers(1, 8), max_size=3),
        min_size=1,
    ).filter(lambda g: any(not values for values in g.values()))
)
def test_empty_grid_values(
    grid: dict[str, list[int]], base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    outcome = submit(sweep_file, {**base, "grid": grid})
    assert_refused(outcome, store, "needs at least one value")
    assert any(
        f"grid.{k}: needs at least one value" in outcome.err for k, v in grid.items() if not v
    )


@FUZZ
@given(
    shape=st.lists(st.integers(2, 100), min_size=2, max_size=4).filter(
        lambda s: MAX_JOBS_PER_SWEEP < math.prod(s) <= 10 * MAX_JOBS_PER_SWEEP
    )
)
def test_grids_beyond_a_thousand_jobs(
    shape: list[int], base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    paths = ["train.seed", "train.lr", "sae.aux_k", "layer"]
    grid = {path: list(range(1, n + 1)) for path, n in zip(paths, shape, strict=False)}
    outcome = submit(sweep_file, {**base, "grid": grid})
    assert_refused(outcome, store, f"grid: expands to more than {MAX_JOBS_PER_SWEEP} jobs")


def test_a_grid_of_ten_thousand_jobs(base: dict[str, Any], sweep_file: Path, store: Store) -> None:
    grid = {"train.seed": list(range(100)), "sae.aux_k": list(range(1, 101))}
    outcome = submit(sweep_file, {**base, "grid": grid})
    assert_refused(outcome, store, "grid: expands to more than 1000 jobs; split the sweep")
