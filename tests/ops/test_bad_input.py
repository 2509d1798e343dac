"""Bad input never gets past the edge: every malformed sweep file, unknown id and impossible
request exits with code 2 and one message that names the problem, and writes nothing to Redis.

The sweep-file cases are fuzzed with hypothesis: each example is one fault injected into a
sweep that is otherwise accepted. They run the CLI's `main` in this process (fast enough for
many examples); a few cases run the real `saefleet` command as a subprocess.
"""

from __future__ import annotations

import copy
import io
import math
import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel

from jobs.spec import (
    MAX_JOBS_PER_SWEEP,
    MAX_SPEC_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    NAME_PATTERN,
    SweepSpec,
    load_sweep_file,
)
from jobs.submission import check_submission
from jobs.tiny_sweep import tiny_sweep
from ops.cli import main
from queue_app.jobspec import JobConfig
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.queue_app.records import make_sweep
from tests.support import REPO

FUZZ = hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
INT64_MAX = 2**63 - 1


# ---- running the CLI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def problems(self) -> list[str]:
        """The error's lines, less the grid-point line that says where a job came from."""
        return [ln for ln in self.err.splitlines() if ln and not ln.startswith("(grid point")]


def saefleet(*args: str) -> Outcome:
    """Run `saefleet <args>` in this process (the console script's own `main`)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        redirect_stdout(out),
        redirect_stderr(err),
        mock.patch.object(sys, "argv", ["saefleet", *args]),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int), code
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_refused(outcome: Outcome, store: Store, *fragments: str) -> None:
    """Exit 2, one message on stderr naming the problem, nothing on stdout or in Redis."""
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.out == "", outcome.out
    assert outcome.err.startswith("error: "), outcome.err
    assert len(outcome.problems) == 1, outcome.err
    for fragment in fragments:
        assert fragment in outcome.err, (fragment, outcome.err)
    assert store.r.dbsize() == 0, sorted(store.r.keys("*"))[:10]


# ---- the sweep every fault is injected into ------------------------------------------------------


@pytest.fixture
def base(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """A sweep that `sweep submit` accepts (its model and data exist for the preflight)."""
    model, data = tmp_path / "model", tmp_path / "data.jsonl"
    model.mkdir()
    data.write_text('{"text": "hello"}\n')
    return tiny_sweep(model, data, name="fuzz", grid={"sae.k": [4, 8]})


@pytest.fixture
def sweep_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "sweep.yaml"


def submit(path: Path, document: Any) -> Outcome:
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    return saefleet("sweep", "submit", str(path))


def with_value(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """`document` with `dotted` set to `value`, and no grid entry that would override it."""
    out = copy.deepcopy(document)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    if dotted.startswith("job."):
        under = dotted.removeprefix("job.")
        grid = out.get("grid") or {}
        out["grid"] = {
            k: v for k, v in grid.items() if k != under and not k.startswith(f"{under}.")
        }
    return out


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
_TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
_KEYS = st.text(alphabet=_TEXT, min_size=1, max_size=20).filter(
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


@FUZZ
@given(name=st.text(min_size=0, max_size=80).filter(lambda n: not NAME_PATTERN.match(n)))
def test_names_outside_the_pattern(
    name: str, base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    outcome = submit(sweep_file, {**base, "name": name})
    assert_refused(outcome, store, "name: must be 1-48 characters of letters, digits")


@FUZZ
@given(part=st.text(alphabet=_TEXT, min_size=1, max_size=20))
def test_unicode_paths_that_do_not_exist(
    part: str, base: dict[str, Any], sweep_file: Path, tmp_path: Path, store: Store
) -> None:
    model = tmp_path / "missing" / part.replace("/", "_")
    outcome = submit(sweep_file, with_value(base, "job.model", str(model)))
    assert_refused(outcome, store, "FAILED model: local path", "does not exist")


# ---- YAML that attacks the parser ----------------------------------------------------------------


@FUZZ
@given(width=st.integers(2, 12), levels=st.integers(4, 9))
def test_yaml_alias_bombs(
    width: int, levels: int, base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    if width**levels <= MAX_YAML_NODES:
        levels = math.ceil(math.log(MAX_YAML_NODES + 1, width)) + 1
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    text = yaml.safe_dump(base) + "\n".join(lines) + "\n"
    sweep_file.write_text(text)
    outcome = saefleet("sweep", "submit", str(sweep_file))
    assert_refused(outcome, store, f"expands to more than {MAX_YAML_NODES} values")


@pytest.mark.parametrize(
    "text",
    [
        "job: &a [*a]",  # an alias of itself
        "job: " + "[" * 200 + "]" * 200,
        "job:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1200)),  # PyYAML recursion
    ],
    ids=["self-alias", "deep-flow", "deep-block"],
)
def test_self_referencing_and_deeply_nested_yaml(text: str, sweep_file: Path, store: Store) -> None:
    sweep_file.write_text(text)
    outcome = saefleet("sweep", "submit", str(sweep_file))
    assert_refused(outcome, store)
    assert (
        f"deeper than {MAX_YAML_DEPTH} levels" in outcome.err
        or "expands to more than" in outcome.err
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a mapping at the top level, got NoneType"),
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("name: [unclosed", "not valid YAML"),
        ("!!python/object/apply:os.system ['true']", "not valid YAML"),
        ("name: x\n\tjob: 1\n", "not valid YAML"),
    ],
)
def test_documents_that_are_not_sweeps(
    text: str, message: str, sweep_file: Path, store: Store
) -> None:
    sweep_file.write_text(text)
    outcome = saefleet("sweep", "submit", str(sweep_file))
    assert outcome.err.startswith(f"error: {sweep_file}: ") and message in outcome.err
    assert outcome.code == 2 and store.r.dbsize() == 0


@FUZZ
@given(data=st.binary(min_size=1, max_size=400))
def test_arbitrary_bytes(data: bytes, sweep_file: Path, store: Store) -> None:
    sweep_file.write_bytes(data)
    outcome = saefleet("sweep", "submit", str(sweep_file))
    assert outcome.code == 2, outcome
    assert "Traceback" not in outcome.err and outcome.err.startswith("error: ")
    assert store.r.dbsize() == 0


# ---- files that cannot be read -------------------------------------------------------------------


def test_unreadable_files(tmp_path: Path, store: Store) -> None:
    missing = tmp_path / "missing.yaml"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    too_big = tmp_path / "big.yaml"
    too_big.write_text("# " + "x" * MAX_SPEC_BYTES + "\n")
    cases = {
        missing: "cannot read: No such file or directory",
        directory: "cannot read: Is a directory",
        dangling: "cannot read: No such file or directory",
        latin1: "not UTF-8 text",
        too_big: "bytes is too large for a sweep file",
    }
    for path, message in cases.items():
        outcome = saefleet("sweep", "submit", str(path))
        assert_refused(outcome, store, f"error: {path}: ", message)


def test_a_file_without_read_permission(tmp_path: Path, settings: Settings, store: Store) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    # Root reads any file: run the command as root without the capabilities that allow that.
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    proc = run_saefleet(settings, "sweep", "submit", str(path), wrap=as_user)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: ") and "Traceback" not in proc.stderr
    assert "cannot read: Permission denied" in proc.stderr and proc.stdout == ""
    assert store.r.dbsize() == 0


# ---- ids that do not exist, requests that cannot be done -----------------------------------------

_IDS = st.text(alphabet=_TEXT, min_size=1, max_size=30).filter(
    lambda i: not i.startswith("-") and i.strip() == i
)


@FUZZ
@given(ident=_IDS)
def test_unknown_ids(ident: str, settings: Settings, store: Store) -> None:
    for args, kind in [
        (("job", "show", ident), "job"),
        (("job", "cancel", ident), "job"),
        (("logs", ident), "job"),
        (("sweep", "status", ident), "sweep"),
        (("sweep", "wait", ident), "sweep"),
        (("sweep", "cancel", ident), "sweep"),
        (("sweep", "report", ident), "sweep"),
        (("jobs", "list", "--sweep", ident), "sweep"),
        (("fleet", "preempt", ident), "instance"),
    ]:
        assert_refused(saefleet(*args), store, f"no {kind} with id {ident!r}")


def _finished_sweep(store: Store, state: JobState) -> tuple[str, str]:
    [job] = make_sweep(store, "swdone", [state])
    return job.sweep_id, job.job_id


def _snapshot(store: Store) -> dict[str, Any]:
    return {key: store.r.dump(key) for key in store.r.keys("*")}


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_cancelling_what_has_finished(state: JobState, settings: Settings, store: Store) -> None:
    sweep_id, job_id = _finished_sweep(store, state)
    before = _snapshot(store)
    job = saefleet("job", "cancel", job_id)
    assert (job.code, job.err.strip()) == (2, f"error: job {job_id} has already finished ({state})")
    sweep = saefleet("sweep", "cancel", sweep_id)
    assert (sweep.code, sweep.err.strip()) == (
        2,
        f"error: sweep {sweep_id} has no unfinished job to cancel",
    )
    assert _snapshot(store) == before


def test_teardown_with_nothing_running(settings: Settings, store: Store) -> None:
    outcome = saefleet("fleet", "teardown", "--yes")
    assert outcome.code == 0, outcome
    assert "no job was training" in outcome.out
    assert "no provider is configured and no instance recorded" in outcome.out


def test_an_unusable_store_url_stops_the_demo_before_anything_runs(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAEFLEET_STORE_URL", "gs://bucket/sweeps")
    assert_refused(saefleet("demo"), store, "SAEFLEET_STORE_URL", "unknown scheme 'gs'")
    assert not (settings.home / "run").exists()  # no control-plane service was started


# ---- the real command ----------------------------------------------------------------------------


def run_saefleet(
    settings: Settings, *args: str, wrap: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script's command in a subprocess (`wrap`: a command line to run it under)."""
    env = {
        **os.environ,
        "SAEFLEET_HOME": str(settings.home),
        "SAEFLEET_REDIS_URL": settings.broker_url,
    }
    argv = [*(wrap or []), sys.executable, "-m", "ops.cli", *args]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)


def test_the_real_command_refuses_bad_input(
    base: dict[str, Any], tmp_path: Path, settings: Settings, store: Store
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        yaml.safe_dump(base)
        + "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        + "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
        + "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    )
    markup = tmp_path / "markup.yaml"
    markup.write_text(yaml.safe_dump({**base, "name": "[/x]"}))
    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump(with_value(base, "job.train.seed", 2**80)))
    cases = [
        (("sweep", "submit", str(bomb)), f"expands to more than {MAX_YAML_NODES} values"),
        (("sweep", "submit", str(markup)), "(got '[/x]')"),
        (("sweep", "submit", str(huge)), "job.train.seed: must fit in 64 bits"),
        (("job", "show", "nope"), "no job with id 'nope'"),
    ]
    for args, message in cases:
        proc = run_saefleet(settings, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert store.r.dbsize() == 0
