"""Fixtures of the provider tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_lambda import FakeLambda, running_fake_lambda


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    with running_fake_lambda() as api:
        yield api
