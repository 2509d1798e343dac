"""The code bundle: a wheel of this project, built once per code version and uploaded to every
instance, so an instance runs exactly the code that the control plane runs."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs.errors import JobsError

PACKAGES = ("queue_app", "jobs", "sae", "watchdog", "ops")


class BundleError(JobsError):
    """The code bundle cannot be built (or this is not a source checkout)."""


def source_root() -> Path:
    """The project's source tree (where pyproject.toml lives)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise BundleError(f"no pyproject.toml in {root}: saefleet must run from a source checkout")
    return root


def source_digest(root: Path) -> str:
    """A hash of everything that goes into the wheel."""
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes())
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_bundle(bundles_dir: Path) -> Path:
    """The wheel for the current source, building it when this version has none yet."""
    root = source_root()
    target = bundles_dir / source_digest(root)
    wheels = sorted(target.glob("saefleet-*.whl"))
    if wheels:
        return wheels[0]
    bundles_dir.mkdir(parents=True, exist_ok=True)
    with open(bundles_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others reuse its wheel
        wheels = sorted(target.glob("saefleet-*.whl"))
        if wheels:
            return wheels[0]
        with tempfile.TemporaryDirectory(dir=bundles_dir) as tmp:
            _build_wheel(root, Path(tmp))
            built = sorted(Path(tmp).glob("saefleet-*.whl"))
            if not built:
                raise BundleError("pip wheel produced no saefleet wheel")
            staging = Path(tmp) / "out"
            staging.mkdir()
            shutil.move(built[0], staging / built[0].name)
            staging.rename(target)
    return next(target.glob("saefleet-*.whl"))


def _build_wheel(root: Path, out: Path) -> None:
    """pip wheel on a clean copy of the sources (so no stale build/ output leaks in)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (root / name).exists():
                shutil.copy2(root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in PACKAGES:
            shutil.copytree(root / package, src / package, ignore=ignore)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "--wheel-dir",
                str(out),
                str(src),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TMPDIR": tmp},
            check=False,
            timeout=300,
        )
    if proc.returncode != 0:
        raise BundleError(f"building the code bundle failed: {proc.stderr.strip()[-500:]}")
