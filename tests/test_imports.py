"""Import hygiene the design relies on: the control plane never loads torch or transformers
(only the GPU-side task does), and our top-level `watchdog/` package is never confused with
PyPI's `watchdog`."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTROL_PLANE = [
    "ops.cli",
    "queue_app.celery_app",
    "jobs.stages",
    "jobs.sweep_tasks",
    "jobs.tunnels",
    "watchdog.schedule",
    "watchdog.tasks",
    "ops.drain",
    "ops.teardown",
]


def test_control_plane_does_not_import_torch() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for m in {CONTROL_PLANE!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(n for n in ('torch', 'transformers', 'datasets') "
        "if n in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_no_dependency_needs_pypi_watchdog() -> None:
    needs = [
        dist.metadata["Name"]
        for dist in importlib.metadata.distributions()
        for req in dist.requires or []
        if re.match(r"watchdog\b", req) and "extra ==" not in req
    ]
    assert needs == []
    import watchdog

    assert Path(watchdog.__file__).resolve().parent == ROOT / "watchdog"
