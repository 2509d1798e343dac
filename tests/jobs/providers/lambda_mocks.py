"""What the LambdaCloud tests share: a client on httpx.MockTransport or on the fake API
(tests/support/fake_lambda.py, real HTTP on loopback), and the replies and requests they use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from jobs.providers import (
    LaunchRequest,
)
from jobs.providers.lambda_api import RetryPolicy
from jobs.providers.lambda_cloud import LambdaCloud
from jobs.providers.pacing import Pacer, Rate
from tests.support.fake_lambda import FakeLambda

KEY = "lk-test-9f8e7d6c5b4a39281706"
BASE = "https://lambda.test/api/v1"
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake saefleet"
)
Handler = Callable[[httpx.Request], httpx.Response]


def no_pacing() -> Pacer:
    return Pacer({"request": Rate(0.0), "launch": Rate(0.0)})


class Sleeps(list[float]):
    """A RetryPolicy sleep that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def policy(sleeps: Sleeps | None = None, **overrides: Any) -> RetryPolicy:
    return RetryPolicy(sleep=sleeps if sleeps is not None else Sleeps(), **overrides)


def mock_cloud(handler: Handler, sleeps: Sleeps | None = None, **retry: Any) -> LambdaCloud:
    return LambdaCloud(
        KEY,
        BASE,
        timeout=5,
        pacer=no_pacing(),
        retry=policy(sleeps, **retry),
        transport=httpx.MockTransport(handler),
    )


def data(payload: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"data": payload})


def error(status: int, code: str, message: str = "nope", **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "suggestion": None}}
    return httpx.Response(status, json=body, headers=headers)


def wire_instance(
    instance_id: str, name: str, status: str = "active", ip: str | None = "10.1.2.3"
) -> dict[str, Any]:
    return {
        "id": instance_id,
        "name": name,
        "ip": ip,
        "status": status,
        "region": {"name": "us-east-1", "description": "Virginia"},
        "instance_type": {
            "name": "gpu_1x_a100",
            "description": "1x A100 (40 GB PCIe)",
            "gpu_description": "A100 (40 GB PCIe)",
            "price_cents_per_hour": 129,
            "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": 1},
        },
        "ssh_key_names": ["saefleet"],
        "file_system_names": [],
    }


def request(name: str = "sf-job1-1", **fields: Any) -> LaunchRequest:
    values: dict[str, Any] = {
        "name": name,
        "instance_type": "gpu_1x_a100",
        "region": "us-east-1",
        "ssh_public_key": PUBLIC_KEY,
        **fields,
    }
    return LaunchRequest(**values)


def fake_cloud(api: FakeLambda, pacer: Pacer | None = None, timeout: float = 5) -> LambdaCloud:
    retry = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05, jitter_s=0.01, max_total_s=10)
    return LambdaCloud(
        api.api_key, api.base_url, timeout=timeout, pacer=pacer or no_pacing(), retry=retry
    )
