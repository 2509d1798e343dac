"""moto's S3 server (`moto_server` from `moto[server]`) as its own process on a free loopback
port, for tests that talk to it through boto3 exactly as to AWS S3 or R2. Credentials are
dummies; the server accepts any."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from queue_app.processes import free_port, port_open

START_TIMEOUT_S = 30.0
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_binary() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]' (the dev extra)")
    return found


ENFORCE_AUTH = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
"""moto_server's environment to check credentials (unknown keys are denied, as by S3)."""


@contextmanager
def moto_s3_server(log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start moto_server (with `env` added to ours), yield its endpoint URL, stop it."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start; see {log_path}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fresh_bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    """A new bucket named `prefix-<random>` in moto, with the test credentials in the
    environment as boto3 reads them; returns its name."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"{prefix}-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket
