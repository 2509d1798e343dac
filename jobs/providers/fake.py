"""An in-process provider: instances live in a dict, calls take a configurable time and can be
told to fail. The stage and watchdog unit tests and the watchdog benchmark run against it
instead of a cloud (it satisfies the `Provider` protocol of jobs.providers.base)."""

from __future__ import annotations

import builtins
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from jobs.providers.base import (
    INSTANCE_NAME_PREFIX,
    Instance,
    InstanceStatus,
    InstanceType,
    LaunchRequest,
)
from jobs.providers.errors import NotFound, ProviderError

FAKE_TYPE = "fake-gpu"
FAKE_REGION = "fake-1"


@dataclass(frozen=True)
class ProviderLatency:
    """Seconds each kind of call takes (an HTTP round trip of a cloud API, say)."""

    list_s: float = 0.0
    get_s: float = 0.0
    terminate_s: float = 0.0


class FakeProvider:
    """A provider whose instances live in a dict; thread-safe; counts the calls it gets.

    `launch` starts instances in `launch_status` (ACTIVE unless a test wants them to boot);
    `fail_next` makes the next calls of one kind raise the given errors, one per call;
    `types` is what `instance_types` offers (one GPU-less type unless a test sets others)."""

    def __init__(self, name: str = "local", latency: ProviderLatency | None = None) -> None:
        self.name = name
        self.latency = latency or ProviderLatency()
        self.launch_status = InstanceStatus.ACTIVE
        self.types = [InstanceType(name=FAKE_TYPE, price_per_hour=1.0, regions=[FAKE_REGION])]
        self.instances: dict[str, Instance] = {}
        self.calls: dict[str, int] = defaultdict(int)
        self._failures: dict[str, list[ProviderError]] = defaultdict(list)
        self._lock = threading.Lock()

    def add(
        self,
        instance_id: str,
        name: str,
        status: InstanceStatus = InstanceStatus.ACTIVE,
        instance_type: str = FAKE_TYPE,
    ) -> Instance:
        """An instance the provider runs (as if launched earlier)."""
        instance = Instance(
            id=instance_id,
            name=name,
            status=status,
            instance_type=instance_type,
            region=FAKE_REGION,
            price_per_hour=1.0,
            host="127.0.0.1",
            workdir=f"/home/ubuntu/{name}",
        )
        with self._lock:
            self.instances[instance_id] = instance
        return instance

    def set_status(self, instance_id: str, status: InstanceStatus) -> None:
        with self._lock:
            self.instances[instance_id] = self.instances[instance_id].model_copy(
                update={"status": InstanceStatus(status)}
            )

    def fail_next(self, call: str, *errors: ProviderError) -> None:
        """The next len(errors) calls of `call` (launch, get, list, terminate) raise these."""
        with self._lock:
            self._failures[call].extend(errors)

    def instance_types(self) -> builtins.list[InstanceType]:
        return list(self.types)

    def launch(self, request: LaunchRequest) -> Instance:
        """A new instance named `request.name`, or the live one already named so."""
        self._call("launch", 0.0)
        with self._lock:
            live = [i for i in self.instances.values() if i.name == request.name]
        if live and not live[-1].status.gone:
            return live[-1]
        return self.add(
            f"fake-{len(self.instances)}", request.name, self.launch_status, request.instance_type
        )

    def get(self, instance_id: str) -> Instance:
        self._call("get", self.latency.get_s)
        with self._lock:
            instance = self.instances.get(instance_id)
        if instance is None:
            raise NotFound(f"no fake instance {instance_id}")
        return instance

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        self._call("list", self.latency.list_s)
        with self._lock:
            instances = list(self.instances.values())
        return [
            i
            for i in instances
            if not i.status.gone and (include_foreign or i.name.startswith(INSTANCE_NAME_PREFIX))
        ]

    def terminate(self, instance_id: str) -> None:
        self._call("terminate", self.latency.terminate_s)
        with self._lock:
            if instance_id in self.instances:
                self.instances[instance_id] = self.instances[instance_id].model_copy(
                    update={"status": InstanceStatus.TERMINATED}
                )

    def notice_channel(self, workdir: str) -> None:
        """Its instances are never told of an interruption."""
        return None

    def _call(self, what: str, seconds: float) -> None:
        with self._lock:
            self.calls[what] += 1
            failure = self._failures[what].pop(0) if self._failures[what] else None
        if seconds:
            time.sleep(seconds)
        if failure is not None:
            raise failure
