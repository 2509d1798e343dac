"""The queue benchmark's measurements, run in a process of their own whose environment points
at the benchmark's private Redis (`python -m ops.bench.measure <phase> <workdir> <rounds>`;
prints one JSON object). `ops.bench.runner` starts Redis and the workers around the phases.

Phases:
- `publish` (no worker consumes): enqueue rate of plain Celery and of saefleet stage messages,
  and the submit of a 1,000-job sweep (in this process phase by phase, and as the CLI).
- `latency` (both workers up): a chain of 8 no-ops and a chord of 100 no-op headers, plain and
  through the stage machinery.

Plain and saefleet samples alternate (enqueue in chunks of 500), so that load from elsewhere on
the machine hits both sides alike. The no-op stages fence on job records made by the real
submit code from a real sweep file, so they parse what a real stage parses.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from celery import chain, chord

from jobs.pipeline import JobRef
from jobs.spec import SweepSpec, load_sweep_file
from jobs.submission import check_submission, job_records, submit_sweep
from jobs.tiny_sweep import tiny_sweep
from ops.bench.tasks import (
    NOOP_HEADER,
    NOOP_STAGES,
    app,
    noop_finalize,
    plain_app,
    plain_noop,
)
from queue_app.connection import get_store
from queue_app.jobspec import JobSpec
from queue_app.records import SweepRecord
from queue_app.settings import get_settings
from queue_app.store import Store

CHAIN_LENGTH = len(NOOP_STAGES)
CHORD_HEADERS = 100
ENQUEUE_TASKS = 10_000
ENQUEUE_CHUNK = 500
SUBMIT_JOBS = 1_000
RESULT_TIMEOUT_S = 120.0


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "min": ordered[0],
        "n": len(ordered),
    }


def clear(store: Store) -> None:
    """Delete every key but kombu's bindings (queues, records, results): a flush would also
    drop the bindings that publishers declared once and cached."""
    keys = [k for k in store.r.scan_iter(count=10_000) if not k.startswith("_kombu.")]
    for start in range(0, len(keys), 10_000):
        store.r.delete(*keys[start : start + 10_000])


# ---- the sweep everything uses ---------------------------------------------------------------


def write_sweep_file(workdir: Path) -> Path:
    """A local sweep of 1,000 tiny jobs (a 10 x 100 grid) over placeholder model and data."""
    model, data = workdir / "model", workdir / "data.jsonl"
    model.mkdir(parents=True, exist_ok=True)
    data.touch()
    grid = {"sae.k": list(range(4, 14)), "train.seed": list(range(100))}
    spec = tiny_sweep(model, data, name="bench-submit", grid=grid)
    path = workdir / "bench-submit.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def create_jobs(
    store: Store, sweep_id: str, spec: SweepSpec, jobs: list[JobSpec], count: int
) -> list[JobRef]:
    """Records of a sweep of the first `count` jobs, QUEUED, as `sweep submit` writes them."""
    records = job_records(sweep_id, jobs[:count], time.time())
    sweep = SweepRecord(
        sweep_id=sweep_id,
        name=spec.name,
        created_at=time.time(),
        spec=spec.model_dump(mode="json"),
        job_ids=[r.job_id for r in records],
    )
    store.create_sweep(sweep, records)
    return [JobRef(job_id=r.job_id, attempt=1, sweep_id=sweep_id) for r in records]


# ---- publish phase -----------------------------------------------------------------------------


def enqueue_rates(spec: SweepSpec, jobs: list[JobSpec], rounds: int) -> dict[str, Any]:
    """Messages published per second, plain vs stage messages, in alternating chunks."""
    store = get_store()
    plain: list[float] = []
    ours: list[float] = []
    for r in range(rounds):
        ref = create_jobs(store, f"enq{r}", spec, jobs, 1)[0].message()
        plain_s = ours_s = 0.0
        for _ in range(ENQUEUE_TASKS // ENQUEUE_CHUNK):
            plain_s += seconds(_publish_plain)
            ours_s += seconds(partial(_publish_stages, ref))
        plain.append(ENQUEUE_TASKS / plain_s)
        ours.append(ENQUEUE_TASKS / ours_s)
        clear(store)
    return {"tasks": ENQUEUE_TASKS, "plain_per_s": summary(plain), "ours_per_s": summary(ours)}


def _publish_plain() -> None:
    for _ in range(ENQUEUE_CHUNK):
        plain_noop.apply_async()


def _publish_stages(ref: dict[str, Any]) -> None:
    first = NOOP_STAGES[0]
    for _ in range(ENQUEUE_CHUNK):
        first.apply_async(args=(ref,))


def submit_in_process(path: Path, rounds: int) -> dict[str, Any]:
    """The CLI's submit path in this process: parse, expand, cost plan + preflight, records +
    chord. Nothing consumes the chord; it is cleared after each round."""
    store, settings = get_store(), get_settings()
    phases: dict[str, list[float]] = {"parse": [], "expand": [], "check": [], "submit": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        spec = load_sweep_file(path)
        t1 = time.perf_counter()
        jobs = spec.expand()
        t2 = time.perf_counter()
        check_submission(spec, settings)
        t3 = time.perf_counter()
        sweep = submit_sweep(spec, jobs, store)
        t4 = time.perf_counter()
        if len(sweep.job_ids) != SUBMIT_JOBS:
            raise RuntimeError(f"submitted {len(sweep.job_ids)} jobs, expected {SUBMIT_JOBS}")
        for name, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[name].append(value)
        clear(store)
    totals = [sum(parts) for parts in zip(*phases.values(), strict=True)]
    return {
        "phases_s": {k: statistics.median(v) for k, v in phases.items()},
        "in_process_s": summary(totals),
    }


def submit_cli(path: Path) -> float:
    """Seconds `saefleet sweep submit` of the file takes, process start included."""
    argv = [sys.executable, "-m", "ops.cli", "sweep", "submit", str(path), "--json"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"sweep submit exited {proc.returncode}: {proc.stderr.strip()}")
    if len(json.loads(proc.stdout)["jobs"]) != SUBMIT_JOBS:
        raise RuntimeError("sweep submit did not submit every job")
    clear(get_store())
    return elapsed


def publish_phase(workdir: Path, rounds: int) -> dict[str, Any]:
    clear(get_store())
    path = write_sweep_file(workdir)
    spec = load_sweep_file(path)
    submit = {
        "jobs": SUBMIT_JOBS,
        **submit_in_process(path, rounds),
        "cli_s": summary([submit_cli(path) for _ in range(rounds)]),
    }
    return {"enqueue": enqueue_rates(spec, spec.expand(), rounds), "submit": submit}


# ---- latency phase -----------------------------------------------------------------------------


def wait_for_workers(timeout_s: float = 60.0) -> None:
    """Until the plain worker and the saefleet worker both answer a ping."""
    deadline = time.monotonic() + timeout_s
    for name, celery_app in (("plain", plain_app), ("saefleet", app)):
        while not celery_app.control.ping(destination=[f"bench-{name}@bench"], timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name} benchmark worker did not answer a ping")


def latency_phase(workdir: Path, chain_rounds: int, chord_rounds: int) -> dict[str, Any]:
    store = get_store()
    wait_for_workers()
    spec = load_sweep_file(write_sweep_file(workdir))
    jobs = spec.expand()
    chain_refs = create_jobs(store, "chain", spec, jobs, chain_rounds + 2)
    chords = [
        (f"chord{r}", create_jobs(store, f"chord{r}", spec, jobs, CHORD_HEADERS))
        for r in range(chord_rounds + 1)
    ]
    for ref in chain_refs[:2]:  # warm up both workers
        _plain_chain()
        _our_chain(ref)
    plain_chain, our_chain = [], []
    for ref in chain_refs[2:]:
        plain_chain.append(seconds(_plain_chain))
        our_chain.append(seconds(partial(_our_chain, ref)))
    plain_chord, our_chord = [], []
    for r, (sweep_id, refs) in enumerate(chords):
        plain = seconds(_plain_chord)
        ours = seconds(partial(_our_chord, sweep_id, refs))
        if r > 0:  # the first round warms up
            plain_chord.append(plain)
            our_chord.append(ours)
    finalized = [store.sweep(s).finalize_runs for s, _ in chords]
    if finalized != [1] * len(chords):
        raise RuntimeError(f"chord bodies ran {finalized} times, expected once each")
    return {
        "chain": {
            "length": CHAIN_LENGTH,
            "plain_s": summary(plain_chain),
            "ours_s": summary(our_chain),
        },
        "chord": {
            "headers": CHORD_HEADERS,
            "plain_s": summary(plain_chord),
            "ours_s": summary(our_chord),
        },
    }


def _plain_chain() -> None:
    chain(*(plain_noop.s() for _ in range(CHAIN_LENGTH))).apply_async().get(RESULT_TIMEOUT_S)


def _our_chain(ref: JobRef) -> None:
    head, *rest = NOOP_STAGES
    result = chain(head.s(ref.message()), *(s.s() for s in rest)).apply_async()
    result.get(RESULT_TIMEOUT_S)


def _plain_chord() -> None:
    header = [plain_noop.s() for _ in range(CHORD_HEADERS)]
    chord(header, plain_noop.s()).apply_async().get(RESULT_TIMEOUT_S)


def _our_chord(sweep_id: str, refs: list[JobRef]) -> None:
    header = [NOOP_HEADER.s(ref.message()) for ref in refs]
    chord(header, noop_finalize.s(sweep_id=sweep_id)).apply_async().get(RESULT_TIMEOUT_S)


def main(argv: list[str]) -> int:
    phase, workdir, rounds = argv[0], Path(argv[1]), int(argv[2])
    if phase == "publish":
        result = publish_phase(workdir, rounds)
    elif phase == "latency":
        result = latency_phase(workdir, chain_rounds=20 * rounds, chord_rounds=3 * rounds)
    else:
        raise SystemExit(f"unknown phase {phase!r}: publish or latency")
    sys.stdout.write(json.dumps(result) + "\n")
    for celery_app in (app, plain_app):
        celery_app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
