"""LambdaCloud's account operations: launch (idempotent, the SSH key registered once), list,
terminate, instance types, failover, pacing; through httpx.MockTransport and real HTTP to
tests/support/fake_lambda.py on loopback."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import httpx
import pytest

from jobs.placement import plan_launch
from jobs.providers import (
    CapacityError,
    Instance,
    InstanceStatus,
    InvalidRequest,
    NotFound,
)
from jobs.providers.lambda_api import LAMBDA_RATES, RetryPolicy, shared_pacer
from jobs.providers.lambda_cloud import LambdaCloud
from jobs.providers.lambda_wire import gpu_memory_gb
from jobs.providers.pacing import Pacer, Rate
from queue_app.jobspec import JobConfig, ProviderSpec
from tests.jobs.providers.lambda_mocks import (
    PUBLIC_KEY,
    Sleeps,
    data,
    error,
    fake_cloud,
    mock_cloud,
    request,
    wire_instance,
)
from tests.support.fake_lambda import FakeLambda

# ---- launch, list, get, terminate --------------------------------------------------------------


class MockAccount:
    """A tiny stateful Lambda behind MockTransport, with a switch to lose launch replies."""

    def __init__(self) -> None:
        self.instances: list[dict[str, Any]] = []
        self.keys: list[dict[str, str]] = []
        self.calls: list[str] = []
        self.launch_bodies: list[dict[str, Any]] = []
        self.lose_launch_replies = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        path = req.url.path.removeprefix("/api/v1/")
        self.calls.append(f"{req.method} {path}")
        if (req.method, path) == ("GET", "ssh-keys"):
            return data(self.keys)
        if (req.method, path) == ("POST", "ssh-keys"):
            body = json.loads(req.content)
            self.keys.append({"id": f"k{len(self.keys)}", **body})
            return data(self.keys[-1])
        if (req.method, path) == ("GET", "instances"):
            return data(self.instances)
        if req.method == "GET" and path.startswith("instances/"):
            found = [i for i in self.instances if i["id"] == path.split("/")[1]]
            return data(found[0]) if found else error(404, "global/object-does-not-exist")
        if (req.method, path) == ("POST", "instance-operations/launch"):
            body = json.loads(req.content)
            self.launch_bodies.append(body)
            instance_id = f"i-{len(self.instances) + 1}"
            self.instances.append(wire_instance(instance_id, body["name"], "booting", None))
            if self.lose_launch_replies:
                self.lose_launch_replies -= 1
                raise httpx.ReadTimeout("reply lost", request=req)
            return data({"instance_ids": [instance_id]})
        raise AssertionError(f"unexpected {req.method} {path}")


def test_launch_registers_the_ssh_key_once_and_maps_the_instance() -> None:
    account = MockAccount()
    cloud = mock_cloud(account)
    first = cloud.launch(request("sf-a-1", file_system="ckpts"))
    cloud.launch(request("sf-b-1"))
    assert account.calls.count("POST ssh-keys") == 1
    assert account.calls.count("GET ssh-keys") == 1
    assert account.keys[0]["name"] == "saefleet" and account.keys[0]["public_key"] == PUBLIC_KEY
    assert account.launch_bodies[0] == {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a100",
        "ssh_key_names": ["saefleet"],
        "name": "sf-a-1",
        "quantity": 1,
        "file_system_names": ["ckpts"],
    }
    assert "file_system_names" not in account.launch_bodies[1]
    assert first == Instance(
        id="i-1",
        name="sf-a-1",
        status=InstanceStatus.BOOTING,
        instance_type="gpu_1x_a100",
        region="us-east-1",
        capacity="on_demand",
        price_per_hour=1.29,
        host=None,
        ssh_user="ubuntu",
        workdir="/home/ubuntu/saefleet",
    )


def test_a_key_name_taken_by_another_public_key_is_refused() -> None:
    account = MockAccount()
    account.keys.append({"id": "k0", "name": "saefleet", "public_key": "ssh-ed25519 OTHER x"})
    with pytest.raises(InvalidRequest, match="different public key"):
        mock_cloud(account).launch(request())
    assert "POST instance-operations/launch" not in account.calls


def test_launch_after_a_lost_reply_finds_the_instance_by_name_instead_of_launching_again() -> None:
    account = MockAccount()
    account.lose_launch_replies = 1
    sleeps = Sleeps()
    instance = mock_cloud(account, sleeps).launch(request("sf-job7-2"))
    assert account.calls.count("POST instance-operations/launch") == 1
    assert [i["name"] for i in account.instances] == ["sf-job7-2"]
    assert instance.id == "i-1" and instance.name == "sf-job7-2"
    assert len(sleeps) == 1


def test_launch_of_an_existing_name_returns_it_without_launching() -> None:
    account = MockAccount()
    account.keys.append({"id": "k0", "name": "saefleet", "public_key": PUBLIC_KEY})
    account.instances.append(wire_instance("i-9", "sf-job7-2"))
    assert mock_cloud(account).launch(request("sf-job7-2")).id == "i-9"
    assert "POST instance-operations/launch" not in account.calls


def test_launch_rejects_a_name_longer_than_lambda_allows() -> None:
    with pytest.raises(InvalidRequest, match="64"):
        mock_cloud(MockAccount()).launch(request("sf-" + "x" * 62))


def test_list_returns_only_our_prefix_unless_asked_for_all() -> None:
    account = MockAccount()
    account.instances += [wire_instance("i-1", "sf-j-1"), wire_instance("i-2", "notebook")]
    account.instances.append({**wire_instance("i-3", ""), "name": None})
    cloud = mock_cloud(account)
    assert [i.id for i in cloud.list()] == ["i-1"]
    assert [i.id for i in cloud.list(include_foreign=True)] == ["i-1", "i-2", "i-3"]


def test_terminate_of_a_gone_instance_is_success() -> None:
    mock_cloud(lambda r: error(404, "global/object-does-not-exist")).terminate("i-gone")

    def terminated(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return error(400, "global/invalid-parameters", "instance is terminated")
        return data(wire_instance("i-1", "sf-j-1", "terminated"))

    mock_cloud(terminated).terminate("i-1")


def test_terminate_refused_for_a_live_instance_raises() -> None:
    def refused(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return error(400, "global/invalid-parameters", "instance_ids: bad")
        return data(wire_instance("i-1", "sf-j-1", "active"))

    with pytest.raises(InvalidRequest):
        mock_cloud(refused).terminate("i-1")


def test_instance_types_map_price_memory_regions_and_no_spot() -> None:
    offer = {
        "instance_type": wire_instance("x", "x")["instance_type"],
        "regions_with_capacity_available": [
            {"name": "us-west-1", "description": "California"},
            {"name": "us-east-1", "description": "Virginia"},
        ],
    }
    (itype,) = mock_cloud(lambda r: data({"gpu_1x_a100": offer})).instance_types()
    assert itype.name == "gpu_1x_a100"
    assert itype.price_per_hour == 1.29
    assert itype.spot_price_per_hour is None
    assert itype.gpu_count == 1 and itype.gpu_memory_gb == 40
    assert itype.regions == ["us-east-1", "us-west-1"]


@pytest.mark.parametrize(
    ("descriptions", "expected"),
    [
        (("A100 (40 GB SXM4)", "1x A100 (40 GB SXM4)"), 40),
        (("", "1x A100 (40 GB SXM4)"), 40),
        (("H100 (80GB PCIe)",), 80),
        (("GH200 (96 GB)",), 96),
        (("", "", "gpu_1x_mystery"), 0),
    ],
)
def test_gpu_memory_is_parsed_from_descriptions(
    descriptions: tuple[str, ...], expected: float
) -> None:
    assert gpu_memory_gb(*descriptions) == expected


# ---- failover ----------------------------------------------------------------------------------


def launch_with_failover(
    cloud: LambdaCloud, config: JobConfig, name: str
) -> tuple[Instance, list[str]]:
    """What the provision stage does: candidates in failover order, next one on no capacity."""
    tried = []
    for candidate in plan_launch(config, ProviderSpec(name="lambda"), cloud, preemptions=0):
        tried.append(f"{candidate.instance_type}@{candidate.region}")
        try:
            return cloud.launch(
                request(name, instance_type=candidate.instance_type, region=candidate.region)
            ), tried
        except CapacityError:
            continue
    raise AssertionError(f"nothing launched after {tried}")


def job_config(min_vram_gb: float = 38) -> JobConfig:
    return JobConfig.model_validate(
        {
            "model": "meta-llama/Llama-3.1-8B",
            "layer": 12,
            "dataset": "lmsys/lmsys-chat-1m",
            "sae": {"n_latents": 32768},
            "train": {"total_tokens": 1_000_000},
            "gpu": {"min_vram_gb": min_vram_gb},
        }
    )


def test_failover_tries_regions_and_types_cheapest_first(fake_lambda: FakeLambda) -> None:
    fake_lambda.no_capacity("gpu_1x_a100")  # listed with capacity, refused at launch
    fake_lambda.no_capacity("gpu_1x_a100_sxm4", listed=False)
    with fake_cloud(fake_lambda) as cloud:
        instance, tried = launch_with_failover(cloud, job_config(), "sf-fo-1")
    assert tried == [
        "gpu_1x_a100@us-east-1",
        "gpu_1x_a100@us-west-1",
        "gpu_1x_h100_pcie@us-south-1",
    ]
    assert instance.instance_type == "gpu_1x_h100_pcie" and instance.region == "us-south-1"
    assert len(fake_lambda.instances) == 1


def test_launch_boot_active_terminate_gone(fake_lambda: FakeLambda) -> None:
    fake_lambda.boot_reads = 2
    with fake_cloud(fake_lambda) as cloud:
        launched = cloud.launch(request("sf-life-1"))
        statuses = [launched.status]
        while statuses[-1] is InstanceStatus.BOOTING:
            statuses.append(cloud.get(launched.id).status)
        assert statuses == [InstanceStatus.BOOTING, InstanceStatus.BOOTING, InstanceStatus.ACTIVE]
        assert cloud.get(launched.id).host == "10.0.0.1"
        assert [i.name for i in cloud.list()] == ["sf-life-1"]
        cloud.terminate(launched.id)
        assert cloud.get(launched.id).status is InstanceStatus.TERMINATING
        assert cloud.get(launched.id).status is InstanceStatus.TERMINATED
        with pytest.raises(NotFound):
            cloud.get(launched.id)
        cloud.terminate(launched.id)  # gone: still success
        assert cloud.list() == []


def test_preempted_instances_report_it(fake_lambda: FakeLambda) -> None:
    with fake_cloud(fake_lambda) as cloud:
        instance = cloud.launch(request("sf-pre-1"))
        fake_lambda.preempt(instance.id)
        assert cloud.get(instance.id).status is InstanceStatus.PREEMPTED
        assert cloud.get(instance.id).status.gone


def test_a_burst_of_5xx_and_a_429_are_ridden_out(fake_lambda: FakeLambda) -> None:
    fake_lambda.fail(count=3, status=500)
    fake_lambda.rate_limit(retry_after=0.3)
    with fake_cloud(fake_lambda) as cloud:
        assert len(cloud.instance_types()) == 5
    times = [r.at for r in fake_lambda.requests]
    assert len(times) == 5
    assert times[4] - times[3] >= 0.3  # Retry-After honoured


def test_a_launch_whose_reply_times_out_is_not_launched_twice(fake_lambda: FakeLambda) -> None:
    fake_lambda.slow("instance-operations/launch", delay_s=1.5)
    with fake_cloud(fake_lambda, timeout=0.5) as cloud:
        instance = cloud.launch(request("sf-slow-1"))
    assert [i.name for i in fake_lambda.instances.values()] == ["sf-slow-1"]
    assert fake_lambda.paths("POST").count("POST instance-operations/launch") == 1
    assert instance.id == next(iter(fake_lambda.instances))


def test_file_system_in_the_wrong_region_is_permanent(fake_lambda: FakeLambda) -> None:
    fake_lambda.add_file_system("ckpts", "us-west-1")
    with fake_cloud(fake_lambda) as cloud:
        assert cloud.file_system_region("ckpts") == "us-west-1"
        with pytest.raises(InvalidRequest, match="file-system-in-wrong-region"):
            cloud.launch(request("sf-fs-1", region="us-east-1", file_system="ckpts"))
        assert (
            cloud.launch(request("sf-fs-1", region="us-west-1", file_system="ckpts")).region
            == "us-west-1"
        )
        with pytest.raises(NotFound, match="no filesystem named"):
            cloud.file_system_region("nope")


class RecordingPacer(Pacer):
    """A pacer on a clock that stands still: the slot each call reserves (clock + wait) is
    recorded with what it paced, and no call sleeps, so the spacing is checked however late a
    thread runs on a loaded machine."""

    def __init__(self, rates: dict[str, Rate]) -> None:
        super().__init__(rates, clock=lambda: 0.0, sleep=lambda _: None)
        self.slots: list[tuple[tuple[str, ...], float]] = []
        self._record = threading.Lock()

    def acquire(self, *kinds: str) -> float:
        wait = super().acquire(*kinds)
        with self._record:
            self.slots.append((kinds, wait))
        return wait


def test_pacer_keeps_requests_and_launches_to_their_rates(fake_lambda: FakeLambda) -> None:
    pacer = RecordingPacer(
        {"request": Rate(0.05), "launch": Rate(0.2, max_per_window=2, window_s=0.6)}
    )
    clouds = [fake_cloud(fake_lambda, pacer) for _ in range(2)]
    threads = [
        threading.Thread(target=lambda c=c, n=n: c.launch(request(f"sf-pace{n}-1")))
        for n, c in enumerate(clouds * 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # every request the clouds sent took a slot of the shared pacer, launches one of both rates
    assert len(pacer.slots) == len(fake_lambda.requests)
    times = sorted(at for _, at in pacer.slots)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.05 - 1e-9
    launches = sorted(at for kinds, at in pacer.slots if "launch" in kinds)
    assert len(launches) == 4
    assert min(b - a for a, b in itertools.pairwise(launches)) >= 0.2 - 1e-9
    assert launches[2] - launches[0] >= 0.6 - 1e-9  # at most 2 in any 0.6 s window
    assert launches[3] - launches[1] >= 0.6 - 1e-9
    for cloud in clouds:
        cloud.close()


def test_every_client_of_the_process_shares_one_pacer(
    fake_lambda: FakeLambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    pacer = shared_pacer()
    assert pacer.rates == LAMBDA_RATES
    monkeypatch.setattr(pacer, "_clock", lambda: 0.0)  # a clock that stands still: the waits
    monkeypatch.setattr(pacer, "_sleep", lambda _: None)  # are the slots, however slow the run
    pacer.reset()
    waits: list[float] = []
    acquire = pacer.acquire
    monkeypatch.setattr(pacer, "acquire", lambda *kinds: waits.append(acquire(*kinds)) or 0.0)
    retry = RetryPolicy(max_attempts=1)
    for _ in range(2):  # two clients with default pacing, one request each
        with LambdaCloud(fake_lambda.api_key, fake_lambda.base_url, retry=retry) as cloud:
            cloud.instance_types()
    assert len(fake_lambda.requests) == 2
    # one pacer for both: the second client's slot comes an interval after the first's
    assert waits == [0.0, LAMBDA_RATES["request"].min_interval_s]
    pacer.reset()  # its slots were on the standing clock


def test_pacer_reserves_slots_for_concurrent_callers_without_real_time() -> None:
    now = [100.0]
    waits: list[float] = []
    pacer = Pacer(
        {"request": Rate(1.0), "launch": Rate(12.0, max_per_window=5, window_s=60.0)},
        clock=lambda: now[0],
        sleep=waits.append,
    )
    assert [pacer.acquire("request") for _ in range(3)] == [0.0, 1.0, 2.0]
    now[0] = 200.0
    launch_waits = [pacer.acquire("request", "launch") for _ in range(6)]
    assert launch_waits == [0.0, 12.0, 24.0, 36.0, 48.0, 60.0]
    pacer = Pacer({"launch": Rate(0.0, max_per_window=2, window_s=10.0)}, lambda: 0.0, waits.append)
    assert [pacer.acquire("launch") for _ in range(4)][2:] == [10.0, 10.0]
