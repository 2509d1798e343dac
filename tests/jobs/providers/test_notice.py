"""Interruption notices as an instance reads them: IMDSv2 against a loopback fake of the
metadata service, the local provider's notice file, and the GPU-side watch that acts on each
new notice once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.notice_watch import NoticeWatch
from jobs.providers.aws import AWSProvider
from jobs.providers.lambda_cloud import LambdaCloud
from jobs.providers.notice import (
    FileNotices,
    ImdsNotices,
    Notice,
    NoticeChannel,
    NoticeKind,
    notices_json,
    open_notice_source,
)
from tests.support.fake_imds import FakeIMDS, serve_imds

INTERRUPT_AT = 1_796_300_000.0  # whole seconds: IMDS times have no fraction


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with serve_imds() as fake:
        yield fake


@pytest.fixture
def source(imds: FakeIMDS) -> Iterator[ImdsNotices]:
    notices = ImdsNotices(imds.url)
    yield notices
    notices.close()


def test_no_notice_until_one_is_armed_and_every_read_uses_a_token(
    imds: FakeIMDS, source: ImdsNotices
) -> None:
    assert source.poll() == []
    assert imds.requests[0] == ("PUT", "/latest/api/token")
    assert [r for r in imds.requests if r[0] == "GET"] == [
        ("GET", "/latest/meta-data/spot/instance-action"),
        ("GET", "/latest/meta-data/events/recommendations/rebalance"),
    ]


def test_an_interruption_and_a_rebalance_recommendation_are_read(
    imds: FakeIMDS, source: ImdsNotices
) -> None:
    imds.arm_rebalance(INTERRUPT_AT - 60)
    assert source.poll() == [Notice(kind=NoticeKind.REBALANCE, at=INTERRUPT_AT - 60)]
    imds.arm_interruption(INTERRUPT_AT, action="stop")
    assert source.poll() == [
        Notice(kind=NoticeKind.INTERRUPTION, at=INTERRUPT_AT, action="stop"),
        Notice(kind=NoticeKind.REBALANCE, at=INTERRUPT_AT - 60),
    ]


def test_a_lapsed_token_is_replaced(imds: FakeIMDS, source: ImdsNotices) -> None:
    source.poll()
    imds.expire_tokens()
    imds.arm_interruption(INTERRUPT_AT)
    assert [n.kind for n in source.poll()] == [NoticeKind.INTERRUPTION]
    assert [r for r in imds.requests if r[0] == "PUT"] == [("PUT", "/latest/api/token")] * 2


def test_an_unreachable_metadata_service_gives_no_notice() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    source = ImdsNotices(f"http://127.0.0.1:{port}")
    assert source.poll() == []
    source.close()


def test_the_notice_file_is_read_and_a_torn_one_gives_no_notice(tmp_path: Path) -> None:
    path = tmp_path / ".saefleet-notice.json"
    source = open_notice_source(NoticeChannel(kind="file", location=str(path)))
    assert isinstance(source, FileNotices) and source.poll() == []
    notice = Notice(kind=NoticeKind.INTERRUPTION, at=INTERRUPT_AT, action="terminate")
    path.write_text(notices_json([notice]))
    assert source.poll() == [notice]
    path.write_text('[{"kind": "interrup')
    assert source.poll() == []


def test_providers_name_their_channels() -> None:
    aws = AWSProvider(["us-east-1"], metadata_url="http://127.0.0.1:9")
    assert aws.notice_channel("/home/ubuntu/saefleet") == NoticeChannel(
        kind="imds", location="http://127.0.0.1:9"
    )
    assert LambdaCloud("secret-key").notice_channel("/home/ubuntu/saefleet") is None


def test_the_watch_acts_once_on_each_new_notice(imds: FakeIMDS, source: ImdsNotices) -> None:
    seen: list[Notice] = []
    watch = NoticeWatch(source, poll_s=60, on_notice=seen.append)
    assert watch.poll_once() == []
    imds.arm_rebalance(INTERRUPT_AT - 60)
    assert [n.kind for n in watch.poll_once()] == [NoticeKind.REBALANCE]
    assert watch.poll_once() == []  # the same recommendation again: already acted on
    imds.arm_interruption(INTERRUPT_AT)
    assert [n.kind for n in watch.poll_once()] == [NoticeKind.INTERRUPTION]
    assert watch.poll_once() == []
    assert [n.kind for n in seen] == [NoticeKind.REBALANCE, NoticeKind.INTERRUPTION]


def test_a_notice_whose_handling_failed_is_handled_at_the_next_poll(
    imds: FakeIMDS, source: ImdsNotices
) -> None:
    calls: list[Notice] = []

    def flaky(notice: Notice) -> None:
        calls.append(notice)
        if len(calls) == 1:
            raise ConnectionError("redis is restarting")

    watch = NoticeWatch(source, poll_s=60, on_notice=flaky)
    imds.arm_interruption(INTERRUPT_AT)
    assert watch.poll_once() == []
    assert len(watch.poll_once()) == 1
    assert len(calls) == 2


def test_the_watch_thread_reads_the_service_until_stopped(
    imds: FakeIMDS, source: ImdsNotices
) -> None:
    noticed = threading.Event()
    watch = NoticeWatch(source, poll_s=0.05, on_notice=lambda _: noticed.set()).start()
    try:
        imds.arm_interruption(time.time() + 120)
        assert noticed.wait(timeout=10)
    finally:
        watch.stop()
    polls = len(imds.requests)
    assert not watch._thread.is_alive() and len(imds.requests) == polls
