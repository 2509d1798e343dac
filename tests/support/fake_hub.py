"""A Hugging Face Hub on 127.0.0.1, just enough for huggingface_hub's own HfApi to check, create
and commit to model repos: `GET /api/models/<repo>` (and `/tree/<rev>`), `POST /api/repos/create`,
`/api/validate-yaml` (the README's front matter must parse), `/preupload/<rev>` (every file is
"regular": its bytes travel base64 in the commit, so no LFS or Xet storage is involved) and
`/commit/<rev>` (NDJSON: files added, files deleted); and `/<repo>/resolve/<rev>/<file>` (HEAD
and GET), where `hf_hub_download`, and so SAELens' `SAE.from_pretrained`, reads files. A request
without `Bearer <token>` gets a 401 whose message echoes the header it got, as a careless server
might, so that tests can check the token is redacted from our errors. `fail_commits` makes the
next commits answer 422 (huggingface_hub retries a 5xx with backoff for ~25 s, a 4xx not)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import yaml

_REPO_PATH = re.compile(r"^/api/models/([^/]+/[^/]+)(/.*)?$")
_RESOLVE_PATH = re.compile(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$")
COMMIT = "1" * 40


@dataclass
class FakeHub:
    """The repos (path -> bytes per repo), the token it accepts, what it was asked."""

    token: str
    endpoint: str = ""
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_commits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path))
            if auth != f"Bearer {self.token}":
                return 401, {"error": f"Invalid credentials in Authorization header {auth!r}"}
            if method == "POST" and path == "/api/repos/create":
                return self._create(json.loads(body))
            resolve = _RESOLVE_PATH.match(path)
            if resolve is not None:
                return self._file(resolve.group(1), unquote(resolve.group(2)))
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body)["content"])
            match = _REPO_PATH.match(path)
            if match is None or match.group(1) not in self.repos:
                return 404, {"error": "Repository not found"}
            return self._repo_answer(method, match.group(1), match.group(2) or "", body)

    def _repo_answer(self, method: str, repo: str, rest: str, body: bytes) -> tuple[int, Any]:
        files = self.repos[repo]
        if method == "GET" and rest in ("", "/revision/main"):
            return 200, {"id": repo, "sha": "0" * 40, "siblings": [{"rfilename": p} for p in files]}
        if method == "GET" and rest.startswith("/tree/"):
            tree = [
                {"type": "file", "path": p, "size": len(b), "oid": "0" * 40}
                for p, b in files.items()
            ]
            return 200, tree
        if method == "POST" and rest.startswith("/preupload/"):
            paths = [f["path"] for f in json.loads(body)["files"]]
            return 200, {
                "files": [
                    {"path": p, "uploadMode": "regular", "shouldIgnore": False} for p in paths
                ]
            }
        if method == "POST" and rest.startswith("/commit/"):
            if self.fail_commits:
                self.fail_commits -= 1
                return 422, {"error": "Invalid commit (failure injected by the test)"}
            for line in body.decode().splitlines():
                operation = json.loads(line)
                value = operation["value"]
                if operation["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif operation["key"] == "deletedFile":
                    files.pop(value["path"], None)
            return 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/1", "commitOid": COMMIT}
        return 404, {"error": f"no route {method} {rest}"}

    def _create(self, request: dict[str, Any]) -> tuple[int, Any]:
        repo = f"{request['organization']}/{request['name']}"
        url = f"{self.endpoint}/{repo}"
        if repo in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo] = {}
        return 200, {"url": url}

    def _file(self, repo: str, name: str) -> tuple[int, Any]:
        """A file's bytes (what `hf_hub_download` fetches), or 404 EntryNotFound."""
        data = self.repos.get(repo, {}).get(name)
        if data is None:
            return 404, {"error": "Entry not found"}
        return 200, data

    @staticmethod
    def _validate_yaml(content: str) -> tuple[int, Any]:
        front = content.split("---")[1] if content.startswith("---") else ""
        try:
            yaml.safe_load(front)
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": str(exc)}], "warnings": []}
        return 200, {"errors": [], "warnings": []}


@contextmanager
def running_hub(token: str) -> Iterator[FakeHub]:
    """Serve a FakeHub accepting `token` on a free loopback port; stop it afterwards."""
    hub = FakeHub(token)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            auth = self.headers.get("Authorization", "")
            path = self.path.split("?")[0]
            status, reply = hub.answer(method, path, auth, body)
            raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            self.send_response(status)
            if isinstance(reply, bytes):
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(reply).hexdigest()}"')
            else:
                self.send_header("Content-Type", "application/json")
            if status == 404:
                code = "EntryNotFound" if _RESOLVE_PATH.match(path) else "RepoNotFound"
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.endpoint = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
