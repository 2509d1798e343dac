"""A Slack-style incoming webhook on 127.0.0.1 that records what it receives and answers with
the status codes a test queues up (then 200)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEBHOOK_PATH = "/services/TFAKE0000/BFAKE0000/"


@dataclass
class Webhook:
    """Received payloads (path, JSON body) and the replies still queued."""

    url: str = ""
    received: list[tuple[str, Any]] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [body for _, body in self.received]


@contextmanager
def running_webhook(token: str = "xoxFAKEwebhookToken0123456789") -> Iterator[Webhook]:
    """Serve a webhook whose URL ends in `token` (the secret part of a Slack URL)."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"null")
            with hook.lock:
                hook.received.append((self.path, body))
                status = hook.replies.pop(0) if hook.replies else 200
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    hook.url = f"http://{host!s}:{port}{WEBHOOK_PATH}{token}"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
