"""The README stays true: every user-facing setting is in its configuration table, and the
files and commands it points to exist."""

from __future__ import annotations

import re
from pathlib import Path

from ops.cli import app
from queue_app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = {"service_name", "worker_role", "redis_url_file"}  # set by saefleet for its processes


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    variables = [
        str(field.validation_alias or f"SAEFLEET_{name.upper()}")
        for name, field in Settings.model_fields.items()
        if name not in INTERNAL
    ]
    missing = [variable for variable in variables if f"`{variable}`" not in readme]
    assert missing == []


def test_referenced_files_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"`((?:docs|jobs)/[\w./-]+|BENCHMARKS\.md)`", readme):
        assert (ROOT / path).exists(), path


def test_readme_commands_exist() -> None:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    names |= {g.name for g in app.registered_groups if g.name}
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S))
    used = set(re.findall(r"(?:^|; )saefleet ([\w-]+)", blocks, re.M))
    assert used and used <= names, used - names
