"""Stage `verify_gpu`: the seed guide's GPU checklist, run over SSH before any money is spent on
set-up. A failure names the check that failed; the instance is then terminated."""

from __future__ import annotations

import json
import logging
import shlex
from typing import Any

from packaging.version import InvalidVersion, Version

from jobs.errors import StageFailed
from jobs.instances import open_ssh
from jobs.remote import system_python
from jobs.stage_base import StageContext, stage
from queue_app.jobspec import JobConfig
from queue_app.statemachine import JobState

log = logging.getLogger(__name__)

MIN_TORCH = Version("2.5")

# Runs on the instance with its Python; prints one JSON object. torch is imported (1-3 s of CPU)
# only where nvidia-smi found a GPU: on a machine without one, its version comes from its metadata.
PROBE = r"""
import json, shutil, subprocess, sys
out = {"python": sys.version.split()[0]}
smi = shutil.which("nvidia-smi")
if smi:
    q = [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    try:
        r = subprocess.run(q, capture_output=True, text=True, timeout=60)
        out["nvidia_smi"] = {"rc": r.returncode, "out": r.stdout, "err": r.stderr[-400:]}
    except Exception as e:
        out["nvidia_smi"] = {"rc": -1, "out": "", "err": repr(e)}
try:
    if smi:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["cuda_available"] = bool(torch.cuda.is_available())
    else:  # no GPU for torch to see: its installed version is all there is to check
        from importlib.metadata import version
        out["torch"] = version("torch")
except Exception as e:
    out["torch_error"] = repr(e)[:400]
print(json.dumps(out))
"""


class GPUReport:
    """What the probe found, and the checklist's verdict for one job."""

    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe
        self.gpus = _parse_smi(probe.get("nvidia_smi"))

    def failures(self, config: JobConfig) -> list[str]:
        """Each failed check, named; empty when the instance may run the job."""
        if not config.gpu.require_gpu and not self.gpus:
            return self._torch_failures(need_cuda=False)
        problems: list[str] = []
        smi = self.probe.get("nvidia_smi")
        if smi is None:
            problems.append(
                "nvidia-smi: not found, this instance has no NVIDIA GPU "
                "(set job.gpu.require_gpu: false to train on CPU)"
            )
        elif smi["rc"] != 0:
            problems.append(f"nvidia-smi: exit {smi['rc']}: {smi['err'].strip()[:200]}")
        elif len(self.gpus) < config.gpu.count:
            problems.append(f"GPU count: {len(self.gpus)} < job.gpu.count {config.gpu.count}")
        else:
            free = min(g["free_gb"] for g in self.gpus)
            if free < config.gpu.min_vram_gb:
                problems.append(
                    f"free VRAM: {free:.1f} GB < job.gpu.min_vram_gb {config.gpu.min_vram_gb} GB"
                )
        return problems + self._torch_failures(need_cuda=True)

    def _torch_failures(self, need_cuda: bool) -> list[str]:
        if "torch" not in self.probe:
            return [f"torch: cannot import ({self.probe.get('torch_error', 'not installed')})"]
        problems = []
        try:
            if Version(self.probe["torch"].split("+")[0]) < MIN_TORCH:
                problems.append(f"torch version: {self.probe['torch']} < {MIN_TORCH}")
        except InvalidVersion:
            problems.append(f"torch version: cannot parse {self.probe['torch']!r}")
        if need_cuda and not self.probe.get("cuda_available"):
            problems.append(
                f"torch.cuda.is_available(): False (torch {self.probe['torch']}, "
                f"CUDA {self.probe.get('cuda')})"
            )
        return problems

    def summary(self) -> str:
        if self.gpus:
            gpus = ", ".join(
                f"{g['name']} ({g['free_gb']:.0f}/{g['total_gb']:.0f} GB free)" for g in self.gpus
            )
        else:
            gpus = "no GPU"
        return f"{gpus}; torch {self.probe.get('torch', '-')}, CUDA {self.probe.get('cuda') or '-'}"


def _parse_smi(smi: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not smi or smi.get("rc") != 0:
        return []
    gpus = []
    for line in smi["out"].strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            name, total_mib, free_mib = parts
            gpus.append(
                {
                    "name": name,
                    "total_gb": float(total_mib) / 1024,
                    "free_gb": float(free_mib) / 1024,
                }
            )
    return gpus


@stage("verify_gpu")
def verify_gpu(ctx: StageContext) -> None:
    """Check GPU, driver, free VRAM, torch >= 2.5 and CUDA on the instance."""
    instance = ctx.require_instance()
    python = system_python(instance, ctx.settings)
    with open_ssh(instance, ctx.settings) as ssh:
        result = ssh.run(f"{shlex.quote(python)} -c {shlex.quote(PROBE)}", timeout=180)
    if result.exit_status != 0:
        raise StageFailed(f"GPU probe exited {result.exit_status}: {result.stderr.strip()[-300:]}")
    try:
        report = GPUReport(json.loads(result.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise StageFailed(f"GPU probe printed no report: {result.stdout[-300:]!r}") from None
    failures = report.failures(ctx.config)
    if failures:
        raise StageFailed("GPU check failed: " + "; ".join(failures))
    note = report.summary()
    if not report.gpus:
        note += " (the job allows CPU: gpu.require_gpu is false)"
    log.info("GPU verified: %s", note)
    ctx.update_attempt(gpu=note)
    ctx.advance(JobState.BOOTSTRAPPING)
