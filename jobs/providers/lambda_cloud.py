"""Lambda Cloud (API v1) behind the `Provider` protocol: launch by deterministic name without
ever starting a second instance, terminate idempotently, register our SSH key, find a
persistent filesystem's region.

The HTTP exchanges, their error mapping and the retry policy are jobs.providers.lambda_api's;
the reply models and their conversion to our types are jobs.providers.lambda_wire's.
"""

from __future__ import annotations

import builtins
import logging
import os
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import TypeAdapter

from jobs.providers.base import INSTANCE_NAME_PREFIX, Instance, InstanceType, LaunchRequest
from jobs.providers.errors import AuthError, InvalidRequest, NotFound, ProviderError
from jobs.providers.lambda_api import (
    API_KEY_ENV,
    DEFAULT_BASE_URL,
    LambdaAPI,
    RetryPolicy,
    shared_pacer,
)
from jobs.providers.lambda_wire import (
    FILE_SYSTEMS,
    INSTANCE,
    INSTANCES,
    LAUNCH_RESULT,
    SSH_KEY,
    SSH_KEYS,
    TERMINATE_RESULT,
    TYPE_OFFERS,
    FileSystem,
    SSHKey,
    parse_reply,
    same_public_key,
    to_instance,
    to_instance_type,
)
from jobs.providers.pacing import Pacer

if TYPE_CHECKING:
    from queue_app.settings import Settings

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 64

T = TypeVar("T")


class LambdaCloud:
    """Lambda Cloud API v1 client implementing `Provider`."""

    name = "lambda"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30,
        *,
        pacer: Pacer | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api = LambdaAPI(api_key, base_url, timeout, pacer or shared_pacer(), transport)
        self._retry = retry or RetryPolicy()
        self._registered_keys: set[str] = set()

    @property
    def base_url(self) -> str:
        return self._api.base_url

    def __repr__(self) -> str:
        return f"LambdaCloud(base_url={self.base_url!r})"

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> LambdaCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- Provider --------------------------------------------------------------------------

    def instance_types(self) -> list[InstanceType]:
        offers = self._request(TYPE_OFFERS, "GET", "instance-types")
        return [
            to_instance_type(offer.instance_type, offer.regions_with_capacity_available)
            for offer in offers.values()
        ]

    def get(self, instance_id: str) -> Instance:
        return self._retry.run(lambda: self._get_once(instance_id), f"get instance {instance_id}")

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        return self._retry.run(lambda: self._list_once(include_foreign), "list instances")

    def launch(self, request: LaunchRequest) -> Instance:
        """Launch `request.name`, or return the instance that already carries that name.

        Each attempt looks the name up first; once the launch call returned an id, later
        attempts only read that id. A launch whose reply was lost (timeout, 5xx) therefore
        never starts a second instance: the next attempt finds the first one by name (launches
        are paced at least 12 s apart, time enough for it to be listed).
        """
        if len(request.name) > MAX_NAME_LENGTH:
            raise InvalidRequest(
                f"instance name {request.name!r} is longer than {MAX_NAME_LENGTH} characters"
            )
        self.ensure_ssh_key(request.ssh_key_name, request.ssh_public_key)
        body: dict[str, Any] = {
            "region_name": request.region,
            "instance_type_name": request.instance_type,
            "ssh_key_names": [request.ssh_key_name],
            "name": request.name,
            "quantity": 1,
        }
        if request.file_system:
            body["file_system_names"] = [request.file_system]
        launched: list[str] = []

        def attempt() -> Instance:
            if launched:
                return self._get_launched(launched[0])
            existing = self._find_by_name(request.name)
            if existing is not None:
                log.info("lambda: %s already exists as %s", request.name, existing.id)
                return existing
            data = self._api.call("POST", "instance-operations/launch", body, launch=True)
            launched.append(parse_reply(LAUNCH_RESULT, data, "launch").instance_ids[0])
            log.info(
                "lambda: launched %s as %s (%s in %s)",
                request.name,
                launched[0],
                request.instance_type,
                request.region,
            )
            return self._get_launched(launched[0])

        return self._retry.run(attempt, f"launch {request.name}")

    def notice_channel(self, workdir: str) -> None:
        """Lambda gives no notice before it takes an instance back."""
        return None

    def terminate(self, instance_id: str) -> None:
        """Terminate; an instance that is gone already (unknown, terminated) is success."""
        body = {"instance_ids": [instance_id]}
        try:
            self._request(TERMINATE_RESULT, "POST", "instance-operations/terminate", body)
        except NotFound:
            log.info("lambda: %s is already gone", instance_id)
        except InvalidRequest:
            try:
                status = self.get(instance_id).status
            except NotFound:
                return
            if not status.gone:
                raise
        else:
            log.info("lambda: terminating %s", instance_id)

    # ---- beyond the protocol: keys and filesystems ----------------------------------------

    def ssh_keys(self) -> builtins.list[SSHKey]:
        """SSH keys of the account (also a cheap check that the API key works)."""
        return self._request(SSH_KEYS, "GET", "ssh-keys")

    def ensure_ssh_key(self, name: str, public_key: str) -> None:
        """Register `public_key` as `name` unless the account has it already.

        InvalidRequest when `name` is taken by a different key (the fix is to delete that key
        at Lambda or choose another name): launching with it would lock us out of the instance.
        """
        if name in self._registered_keys:
            return

        def attempt() -> None:
            found = self._ssh_key_named(name)
            if found is None:
                body = {"name": name, "public_key": public_key.strip()}
                try:
                    parse_reply(SSH_KEY, self._api.call("POST", "ssh-keys", body), "ssh-key")
                    log.info("lambda: registered SSH key %s", name)
                    return
                except InvalidRequest:  # taken meanwhile, by another process of the fleet?
                    found = self._ssh_key_named(name)
                    if found is None:
                        raise
            if not same_public_key(found.public_key, public_key):
                raise InvalidRequest(
                    f"Lambda already has an SSH key named {name!r} with a different public key: "
                    "delete it at Lambda (SSH keys page) or use another key name"
                )

        self._retry.run(attempt, f"register SSH key {name}")
        self._registered_keys.add(name)

    def file_systems(self) -> builtins.list[FileSystem]:
        return self._request(FILE_SYSTEMS, "GET", "file-systems")

    def file_system_region(self, name: str) -> str:
        """The region of persistent filesystem `name`; NotFound when the account has none."""
        for fs in self.file_systems():
            if fs.name == name:
                return fs.region.name
        raise NotFound(f"Lambda has no filesystem named {name!r}: create it in the region to use")

    # ---- internals -------------------------------------------------------------------------

    def _get_once(self, instance_id: str) -> Instance:
        data = self._api.call("GET", f"instances/{instance_id}")
        return to_instance(parse_reply(INSTANCE, data, "instance"))

    def _get_launched(self, instance_id: str) -> Instance:
        try:
            return self._get_once(instance_id)
        except NotFound:
            raise ProviderError(f"launched instance {instance_id} is not listed yet") from None

    def _list_once(self, include_foreign: bool) -> builtins.list[Instance]:
        wires = parse_reply(INSTANCES, self._api.call("GET", "instances"), "instances")
        instances = [to_instance(w) for w in wires]
        if include_foreign:
            return instances
        return [i for i in instances if i.name.startswith(INSTANCE_NAME_PREFIX)]

    def _find_by_name(self, name: str) -> Instance | None:
        matches = [i for i in self._list_once(include_foreign=True) if i.name == name]
        matches.sort(key=lambda i: i.status.gone)
        return matches[0] if matches else None

    def _ssh_key_named(self, name: str) -> SSHKey | None:
        keys = parse_reply(SSH_KEYS, self._api.call("GET", "ssh-keys"), "ssh-keys")
        return next((k for k in keys if k.name == name), None)

    def _request(
        self, reply: TypeAdapter[T], method: str, path: str, body: dict[str, Any] | None = None
    ) -> T:
        """One call, retried as a whole (parsing included) by the retry policy."""
        return self._retry.run(
            lambda: parse_reply(reply, self._api.call(method, path, body), path),
            f"{method} /{path}",
        )


# ---- construction from settings ----------------------------------------------------------------


def read_api_key(settings: Settings) -> str | None:
    """The API key from LAMBDA_API_KEY, else from SAEFLEET_LAMBDA_API_KEY_FILE; None if neither."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    path = settings.lambda_api_key_file
    if path is None:
        return None
    try:
        return path.expanduser().read_text().strip() or None
    except OSError as exc:
        raise AuthError(
            f"cannot read the Lambda API key file {path}: {exc.strerror or exc}"
        ) from None


def from_settings(settings: Settings) -> LambdaCloud:
    """A LambdaCloud configured from the environment; AuthError when no key is configured."""
    key = read_api_key(settings)
    if key is None:
        raise AuthError(
            f"no Lambda Cloud API key: set {API_KEY_ENV}, or SAEFLEET_LAMBDA_API_KEY_FILE to a "
            "file holding it (create a key in the Lambda Cloud dashboard, API keys page)"
        )
    return LambdaCloud(key, settings.lambda_base_url)
