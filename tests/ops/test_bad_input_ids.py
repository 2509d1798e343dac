"""Unknown ids and impossible requests, and the real command refusing bad input: exit 2
naming the problem, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from jobs.spec import (
    MAX_YAML_NODES,
)
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from tests.ops.bad_input import (
    FUZZ,
    TEXT,
    assert_refused,
    run_saefleet,
    saefleet,
    with_value,
)
from tests.queue_app.records import make_sweep

# ---- ids that do not exist, requests that cannot be done -----------------------------------------

_IDS = st.text(alphabet=TEXT, min_size=1, max_size=30).filter(
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
