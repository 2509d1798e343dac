"""The fake Lambda Cloud API's data: its instance-type catalog, instances, recorded requests,
faults and the replies it builds (served by tests/support/fake_lambda.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

API_PREFIX = "/api/v1/"
DEFAULT_API_KEY = "fake-lambda-key-0123456789abcdef"


def catalog_entry(
    name: str, description: str, cents: int, gpus: int, regions: list[str]
) -> dict[str, Any]:
    gpu = description.split(" ", 1)[1]
    return {
        "instance_type": {
            "name": name,
            "description": description,
            "gpu_description": gpu,
            "price_cents_per_hour": cents,
            "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": gpus},
        },
        "regions_with_capacity_available": [{"name": r, "description": r} for r in regions],
    }


DEFAULT_TYPES: dict[str, dict[str, Any]] = {
    t["instance_type"]["name"]: t
    for t in [
        catalog_entry("gpu_1x_a10", "1x A10 (24 GB PCIe)", 75, 1, ["us-east-1"]),
        catalog_entry("gpu_1x_a100", "1x A100 (40 GB PCIe)", 129, 1, ["us-west-1", "us-east-1"]),
        catalog_entry("gpu_1x_a100_sxm4", "1x A100 (40 GB SXM4)", 139, 1, ["us-west-1"]),
        catalog_entry("gpu_1x_h100_pcie", "1x H100 (80 GB PCIe)", 249, 1, ["us-south-1"]),
        catalog_entry("gpu_8x_a100_80gb_sxm4", "8x A100 (80 GB SXM4)", 1432, 8, []),
    ]
}


@dataclass
class FakeInstance:
    id: str
    name: str
    instance_type: str
    region: str
    ssh_key_names: list[str]
    file_system_names: list[str]
    status: str = "booting"
    reads: int = 0

    def wire(self, types: dict[str, dict[str, Any]], ip: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ip": ip,
            "private_ip": None,
            "status": self.status,
            "ssh_key_names": self.ssh_key_names,
            "file_system_names": self.file_system_names,
            "region": {"name": self.region, "description": self.region},
            "instance_type": types[self.instance_type]["instance_type"],
            "hostname": None,
            "jupyter_url": None,
            "tags": [],
        }


@dataclass
class RecordedRequest:
    at: float
    method: str
    path: str
    body: Any


@dataclass
class Fault:
    path: str
    count: int
    status: int = 500
    code: str | None = "global/unknown"
    retry_after: float | None = None
    malformed: bool = False
    delay_s: float = 0.0

    def applies(self, path: str) -> bool:
        return self.count > 0 and path.startswith(self.path)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def data_reply(data: Any) -> Reply:
    return Reply(200, json.dumps({"data": data}).encode())


def error_reply(status: int, code: str, message: str, suggestion: str | None = None) -> Reply:
    error = {"code": code, "message": message, "suggestion": suggestion}
    return Reply(status, json.dumps({"error": error}).encode())


def fault_reply(fault: Fault) -> Reply:
    if fault.malformed:
        return Reply(200, b"<html>502 Bad Gateway</html>")
    if fault.retry_after is not None:
        reply = error_reply(429, "global/rate-limited", "Too many requests.")
        reply.headers["Retry-After"] = f"{fault.retry_after:g}"
        return reply
    return error_reply(fault.status, fault.code or "global/unknown", "Injected fault.")


def file_system(name: str, region: str) -> dict[str, Any]:
    return {
        "id": f"fs-{name}",
        "name": name,
        "region": {"name": region, "description": region},
        "mount_point": f"/lambda/nfs/{name}",
        "is_in_use": False,
    }
