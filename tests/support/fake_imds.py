"""A loopback stand-in for EC2's instance metadata service, as much of IMDSv2 as the notice
poller uses (moto's metadata service has no spot paths): `PUT /latest/api/token` with a TTL
header gives a token; every GET needs a live token (401 otherwise); `spot/instance-action` and
`events/recommendations/rebalance` answer 404 until a notice is armed."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jobs.providers.notice import INSTANCE_ACTION, REBALANCE


def imds_time(epoch: float) -> str:
    """An epoch as IMDS writes it (`2026-12-03T14:22:00Z`)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeIMDS:
    """The metadata documents served, the tokens issued and the requests seen."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    def arm_interruption(self, at: float, action: str = "terminate") -> None:
        self.documents["/" + INSTANCE_ACTION] = {"action": action, "time": imds_time(at)}

    def arm_rebalance(self, at: float) -> None:
        self.documents["/" + REBALANCE] = {"noticeTime": imds_time(at)}

    def expire_tokens(self) -> None:
        self.tokens.clear()


def _handler(imds: FakeIMDS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            imds.requests.append(("PUT", self.path))
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != "/latest/api/token" or not ttl.isdigit():
                self._answer(400, "bad token request")
                return
            token = secrets.token_urlsafe(16)
            imds.tokens.add(token)
            self._answer(200, token)

        def do_GET(self) -> None:
            imds.requests.append(("GET", self.path))
            if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                self._answer(401, "")
            elif self.path in imds.documents:
                self._answer(200, json.dumps(imds.documents[self.path]))
            else:
                self._answer(404, "Not Found")

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@contextmanager
def serve_imds() -> Iterator[FakeIMDS]:
    """A FakeIMDS on a loopback port (its `url`), stopped on exit."""
    imds = FakeIMDS()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(imds))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-imds", daemon=True
    )
    thread.start()
    imds.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield imds
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
