"""The fake provider keeps the `Provider` protocol's promises the stage tests rely on: launch
is idempotent on the name, a terminated instance is gone from `list`, an unknown one is
NotFound, and scripted failures come once each, in order."""

from __future__ import annotations

import pytest

from jobs.providers import CapacityError, LaunchRequest, NotFound, Provider, ProviderError
from jobs.providers.fake import FAKE_REGION, FAKE_TYPE, FakeProvider

REQUEST = LaunchRequest(
    name="sf-job-1", instance_type=FAKE_TYPE, region=FAKE_REGION, ssh_public_key="ssh-ed25519 k"
)


def test_it_is_a_provider_and_launches_a_name_once() -> None:
    provider = FakeProvider()
    assert isinstance(provider, Provider)
    first = provider.launch(REQUEST)
    assert provider.launch(REQUEST) == first
    provider.terminate(first.id)
    assert provider.list() == []
    assert provider.launch(REQUEST).id != first.id


def test_unknown_instances_are_not_found() -> None:
    with pytest.raises(NotFound):
        FakeProvider().get("fake-404")


def test_scripted_failures_come_once_each_in_order() -> None:
    provider = FakeProvider()
    provider.fail_next("launch", CapacityError("none here"), ProviderError("503"))
    with pytest.raises(CapacityError):
        provider.launch(REQUEST)
    with pytest.raises(ProviderError, match="503"):
        provider.launch(REQUEST)
    assert provider.launch(REQUEST).name == REQUEST.name
    assert provider.calls["launch"] == 3
