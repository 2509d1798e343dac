"""Bad sweep files: names outside the pattern, paths that do not exist, YAML bombs and deep
nesting, documents that are not sweeps, arbitrary bytes, unreadable files: exit 2 naming the
problem, nothing written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from jobs.spec import (
    MAX_SPEC_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    NAME_PATTERN,
)
from queue_app.settings import Settings
from queue_app.store import Store
from tests.ops.bad_input import (
    FUZZ,
    TEXT,
    assert_refused,
    run_saefleet,
    saefleet,
    submit,
    with_value,
)


@FUZZ
@given(name=st.text(min_size=0, max_size=80).filter(lambda n: not NAME_PATTERN.match(n)))
def test_names_outside_the_pattern(
    name: str, base: dict[str, Any], sweep_file: Path, store: Store
) -> None:
    outcome = submit(sweep_file, {**base, "name": name})
    assert_refused(outcome, store, "name: must be 1-48 characters of letters, digits")


@FUZZ
@given(part=st.text(alphabet=TEXT, min_size=1, max_size=20))
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
