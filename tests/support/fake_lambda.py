"""A fake Lambda Cloud API v1 served over real HTTP on 127.0.0.1, with faults you switch on.

    with running_fake_lambda() as api:            # a free port; stopped on exit
        cloud = LambdaCloud(api.api_key, api.base_url)
        api.no_capacity(region="us-west-1")       # launches there get insufficient-capacity
        api.fail(count=2)                         # the next 2 requests answer 500 global/unknown
        api.rate_limit(retry_after=1)             # the next request answers 429 + Retry-After
        api.slow("instance-operations/launch", delay_s=2)  # act, then reply late (a timeout)
        api.preempt(instance_id)                  # the instance's status becomes preempted

Instances boot for `boot_reads` reads of their status (`booting`, no ip), then are `active`;
terminate makes them `terminating`, the next read `terminated`, and after that they are gone
(404). `requests` records every request (monotonic time, method, path, JSON body).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.fake_lambda_model import (
    API_PREFIX,
    DEFAULT_API_KEY,
    DEFAULT_TYPES,
    FakeInstance,
    Fault,
    RecordedRequest,
    Reply,
    data_reply,
    error_reply,
    fault_reply,
    file_system,
)


class FakeLambda:
    """The fake API's state and fault switches; `start()` serves it, `stop()` ends it."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        types: dict[str, dict[str, Any]] | None = None,
        boot_reads: int = 1,
    ) -> None:
        self.api_key = api_key
        self.types = copy.deepcopy(DEFAULT_TYPES if types is None else types)
        self.boot_reads = boot_reads
        self.instances: dict[str, FakeInstance] = {}
        self.ssh_keys: dict[str, str] = {}
        self.file_systems: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._no_capacity: set[tuple[str | None, str | None, bool]] = set()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeLambda:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeLambda is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/api/v1"

    # ---- faults ----------------------------------------------------------------------------

    def fail(
        self, path: str = "", count: int = 1, status: int = 500, code: str | None = "global/unknown"
    ) -> None:
        """The next `count` requests under `path` answer `status` with error `code`."""
        self._add(Fault(path, count, status=status, code=code))

    def rate_limit(self, path: str = "", count: int = 1, retry_after: float = 1.0) -> None:
        """The next `count` requests under `path` answer 429 with Retry-After."""
        self._add(Fault(path, count, status=429, code=None, retry_after=retry_after))

    def malform(self, path: str = "", count: int = 1) -> None:
        """The next `count` requests under `path` answer 200 with a body that is not JSON."""
        self._add(Fault(path, count, status=200, malformed=True))

    def slow(self, path: str = "", count: int = 1, delay_s: float = 1.0) -> None:
        """The next `count` requests under `path` take effect, then reply `delay_s` late."""
        self._add(Fault(path, count, status=200, code=None, delay_s=delay_s))

    def no_capacity(
        self, instance_type: str | None = None, region: str | None = None, listed: bool = True
    ) -> None:
        """Launches of `instance_type` in `region` (None: any) fail with insufficient-capacity.
        With `listed` the region still shows in regions_with_capacity_available (as happens
        at Lambda); without, it disappears from there too."""
        with self._lock:
            self._no_capacity.add((instance_type, region, listed))

    def restore_capacity(self) -> None:
        with self._lock:
            self._no_capacity.clear()

    def preempt(self, instance_id: str) -> None:
        with self._lock:
            self.instances[instance_id].status = "preempted"

    def add_instance(
        self, name: str, instance_type: str = "gpu_1x_a10", status: str = "active"
    ) -> str:
        """An instance launched outside saefleet (or earlier); returns its id."""
        with self._lock:
            instance = self._new_instance(name, instance_type, "us-east-1", [], [])
            instance.status = status
            return instance.id

    def add_file_system(self, name: str, region: str) -> None:
        with self._lock:
            self.file_systems[name] = region

    def paths(self, method: str | None = None) -> list[str]:
        """`METHOD path` of every request so far (only `method` ones when given)."""
        return [f"{r.method} {r.path}" for r in self.requests if method in (None, r.method)]

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    # ---- the API ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            self.requests.append(RecordedRequest(time.monotonic(), method, path, body))
            fault = next((f for f in self._faults if f.applies(path)), None)
            if fault is not None:
                fault.count -= 1
        if fault is not None and fault.delay_s == 0:
            return fault_reply(fault)
        if not self._authorized(headers.get("authorization", "")):
            reply = error_reply(
                401, "global/invalid-api-key", "API key was invalid, expired, or deleted."
            )
        else:
            with self._lock:
                reply = self._route(method, path, body)
        if fault is not None:
            time.sleep(fault.delay_s)
        return reply

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value == self.api_key
        if scheme.lower() == "basic":
            user = base64.b64decode(value).decode(errors="replace").split(":", 1)[0]
            return user == self.api_key
        return False

    def _route(self, method: str, path: str, body: Any) -> Reply:
        if method == "GET" and path.startswith("instances/"):
            return self._get_instance(path.removeprefix("instances/"))
        routes = {
            ("GET", "instance-types"): lambda: data_reply(self._type_offers()),
            ("GET", "instances"): lambda: data_reply(
                [self._read(i) for i in [*self.instances.values()]]
            ),
            ("POST", "instance-operations/launch"): lambda: self._launch(body),
            ("POST", "instance-operations/terminate"): lambda: self._terminate(body),
            ("GET", "ssh-keys"): lambda: data_reply(
                [{"id": f"key-{n}", "name": n, "public_key": k} for n, k in self.ssh_keys.items()]
            ),
            ("POST", "ssh-keys"): lambda: self._add_ssh_key(body),
            ("GET", "file-systems"): lambda: data_reply(
                [file_system(n, r) for n, r in self.file_systems.items()]
            ),
        }
        route = routes.get((method, path))
        if route is None:
            return error_reply(404, "global/object-does-not-exist", f"no route {method} {path}")
        return route()

    def _read_all(self) -> list[dict[str, Any]]:
        return [self._read(instance) for instance in [*self.instances.values()]]

    def _get_instance(self, instance_id: str) -> Reply:
        instance = self.instances.get(instance_id)
        if instance is None:
            return error_reply(
                404, "global/object-does-not-exist", "Specified instance does not exist."
            )
        return data_reply(self._read(instance))

    def _type_offers(self) -> dict[str, Any]:
        offers = copy.deepcopy(self.types)
        for name, offer in offers.items():
            offer["regions_with_capacity_available"] = [
                r
                for r in offer["regions_with_capacity_available"]
                if self._has_capacity(name, r["name"], listing=True)
            ]
        return offers

    def _has_capacity(self, instance_type: str, region: str, listing: bool = False) -> bool:
        return not any(
            t in (None, instance_type) and r in (None, region) and not (listing and listed)
            for t, r, listed in self._no_capacity
        )

    def _read(self, instance: FakeInstance) -> dict[str, Any]:
        instance.reads += 1
        if instance.status == "booting" and instance.reads > self.boot_reads:
            instance.status = "active"
        elif instance.status == "terminating" and instance.reads > 1:
            instance.status = "terminated"
        ip = None if instance.status == "booting" else f"10.0.0.{int(instance.id.split('-')[1])}"
        wire = instance.wire(self.types, ip)
        if instance.status == "terminated":
            self.instances.pop(instance.id)
        return wire

    def _launch(self, body: dict[str, Any]) -> Reply:
        refusal = self._launch_refusal(body)
        if refusal is not None:
            return refusal
        instance = self._new_instance(
            body.get("name") or "",
            body["instance_type_name"],
            body["region_name"],
            body["ssh_key_names"],
            body.get("file_system_names") or [],
        )
        return data_reply({"instance_ids": [instance.id]})

    def _launch_refusal(self, body: dict[str, Any]) -> Reply | None:
        """The error a launch gets, or None when it may go ahead."""
        type_name, region = str(body.get("instance_type_name")), str(body.get("region_name"))
        keys = body.get("ssh_key_names") or []
        file_systems = body.get("file_system_names") or []
        invalid = None
        if type_name not in self.types:
            invalid = f"Invalid instance type {type_name}"
        elif len(keys) != 1 or keys[0] not in self.ssh_keys:
            invalid = "ssh_key_names: exactly one registered key"
        elif any(fs not in self.file_systems for fs in file_systems):
            invalid = f"file_system_names: unknown file system in {file_systems}"
        elif len(body.get("name") or "") > 64:
            invalid = "name: at most 64 characters"
        if invalid is not None:
            return error_reply(400, "global/invalid-parameters", invalid)
        if any(self.file_systems[fs] != region for fs in file_systems):
            code = "instance-operations/launch/file-system-in-wrong-region"
            return error_reply(400, code, "File system is in another region.")
        offered = [r["name"] for r in self.types[type_name]["regions_with_capacity_available"]]
        if region not in offered or not self._has_capacity(type_name, region):
            return error_reply(
                400,
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
                "Choose an instance type with more availability, or try again later.",
            )
        return None

    def _new_instance(
        self, name: str, type_name: str, region: str, keys: list[str], file_systems: list[str]
    ) -> FakeInstance:
        instance_id = f"i-{next(self._ids)}"
        instance = FakeInstance(instance_id, name, type_name, region, keys, file_systems)
        self.instances[instance_id] = instance
        return instance

    def _terminate(self, body: dict[str, Any]) -> Reply:
        ids = body.get("instance_ids") or []
        unknown = [i for i in ids if i not in self.instances]
        if unknown:
            return error_reply(
                404, "global/object-does-not-exist", f"Unknown instance ids {unknown}"
            )
        terminated = []
        for instance_id in ids:
            instance = self.instances[instance_id]
            if instance.status != "terminating":
                instance.status, instance.reads = "terminating", 0
            terminated.append(instance.wire(self.types, None))
        return data_reply({"terminated_instances": terminated})

    def _add_ssh_key(self, body: dict[str, Any]) -> Reply:
        name, public_key = body.get("name"), body.get("public_key")
        if not name or name in self.ssh_keys:
            return error_reply(400, "global/invalid-parameters", "name: missing or already in use")
        self.ssh_keys[name] = public_key or "ssh-ed25519 GENERATED"
        return data_reply({"id": f"key-{name}", "name": name, "public_key": self.ssh_keys[name]})


def _handler_for(api: FakeLambda) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 1 << 16  # one write per reply: no Nagle/delayed-ACK stall between parts

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            path = self.path.split("?", 1)[0]
            if not path.startswith(API_PREFIX):
                reply = error_reply(404, "global/object-does-not-exist", f"no route {path}")
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = api.handle(self.command, path.removeprefix(API_PREFIX), headers, body)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nothing to reply to

    return Handler


@contextmanager
def running_fake_lambda(**kwargs: Any) -> Iterator[FakeLambda]:
    """A started FakeLambda (see FakeLambda's arguments); stopped when the block ends."""
    api = FakeLambda(**kwargs).start()
    try:
        yield api
    finally:
        api.stop()
