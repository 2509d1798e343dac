"""What the planner and placement tests share: instance types, a provider that offers a fixed
list of them, and the example sweep's job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.providers.base import InstanceType
from jobs.spec import SweepSpec, load_sweep_file
from queue_app.jobspec import JobConfig

EXAMPLE = Path(__file__).parents[2] / "jobs" / "examples" / "llama31-8b-pii.yaml"


def itype(name: str, price: float, memory: float, regions: list[str], **extra: Any) -> InstanceType:
    gpus = extra.pop("gpu_count", 1)
    return InstanceType(
        name=name,
        description=f"{gpus}x {extra.pop('gpu', 'A100')} ({memory:g} GB SXM4)",
        gpu_count=gpus,
        gpu_memory_gb=memory,
        price_per_hour=price,
        regions=regions,
        **extra,
    )


class StaticProvider:
    """A Provider whose instance_types() is a fixed list (or raises)."""

    name = "lambda"

    def __init__(self, types: list[InstanceType] | Exception, fs_region: str = "") -> None:
        self.types = types
        self.fs_region = fs_region

    def instance_types(self) -> list[InstanceType]:
        if isinstance(self.types, Exception):
            raise self.types
        return self.types

    def file_system_region(self, name: str) -> str:
        return self.fs_region

    def launch(self, request: Any) -> Any:
        raise NotImplementedError

    def get(self, instance_id: str) -> Any:
        raise NotImplementedError

    def list(self, include_foreign: bool = False) -> list[Any]:
        return []

    def terminate(self, instance_id: str) -> None:
        raise NotImplementedError

    def notice_channel(self, workdir: str) -> None:
        return None


LIVE_TYPES = [
    itype("gpu_1x_a10", 0.75, 24, ["us-east-1"], gpu="A10"),
    itype("gpu_1x_h100_sxm5", 3.29, 80, ["us-south-1"], gpu="H100"),
    itype("gpu_1x_a100_sxm4", 1.29, 40, ["us-west-1", "us-east-1"]),
    itype("gpu_1x_a100", 1.29, 40, []),
    itype("gpu_8x_a100_80gb_sxm4", 14.32, 80, ["us-east-1"], gpu_count=8),
]


def example(**changes: Any) -> SweepSpec:
    raw = load_sweep_file(EXAMPLE).model_dump(exclude_unset=True)
    raw.update(changes)
    return SweepSpec.model_validate(raw)


def config(**job: Any) -> JobConfig:
    return example().expand()[0].config.model_copy(update=job)
