"""`rediss://` (TLS) URLs: a real redis-server with TLS on a loopback port; the state store,
the broker and the result backend all work through it, with the certificate verified."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from queue_app.celery_app import CONTROL_QUEUE, make_app
from queue_app.connection import connect
from queue_app.processes import free_port, redis_server_binary, spawn_detached, stop_process
from queue_app.redis_server import wait_until_ready
from queue_app.settings import Settings, with_tls_defaults
from tests.support.servers import in_ci

PASSWORD = "tls-test-password"


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A rediss:// URL (no ssl_cert_reqs: saefleet adds it) of a TLS-only redis-server."""
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("openssl is needed to test rediss:// URLs")
        pytest.skip("openssl not found")
    cert, key = self_signed(tmp_path)
    port = free_port()
    argv = [
        redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--dir", str(tmp_path),
    ]  # fmt: skip
    pid = spawn_detached(argv, tmp_path / "redis.log")
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={quote(str(cert), safe='')}"
    try:
        wait_until_ready(with_tls_defaults(url), tmp_path / "redis.log", timeout_s=10)
        yield url
    finally:
        stop_process(pid)


def test_tls_defaults_verify_certificates() -> None:
    assert (
        with_tls_defaults("rediss://:p@h:6380/0") == "rediss://:p@h:6380/0?ssl_cert_reqs=required"
    )
    assert with_tls_defaults("rediss://h/0?ssl_ca_certs=/ca") == (
        "rediss://h/0?ssl_ca_certs=/ca&ssl_cert_reqs=required"
    )
    assert with_tls_defaults("rediss://h/0?ssl_cert_reqs=none") == "rediss://h/0?ssl_cert_reqs=none"
    assert with_tls_defaults("redis://:p@h/0") == "redis://:p@h/0"


def test_store_broker_and_results_over_tls(tls_redis: str, home: Path) -> None:
    settings = Settings(home=home, redis_url=tls_redis)  # type: ignore[arg-type]
    store = connect(settings.broker_url)
    assert store.r.ping()
    app = make_app(settings)
    try:
        sent = app.send_task("saefleet.noop.tls-check", kwargs={"n": 1}, ignore_result=True)
        assert store.r.llen(CONTROL_QUEUE) == 1  # routed and queued through TLS
        app.backend.store_result(sent.id, {"ok": True}, "SUCCESS")
        assert app.AsyncResult(sent.id).get(timeout=10) == {"ok": True}
    finally:
        app.close()
        store.r.close()


def test_an_untrusted_certificate_is_refused(tls_redis: str) -> None:
    import redis

    without_ca = tls_redis.partition("?")[0]  # verification on; the self-signed CA unknown
    with pytest.raises(redis.exceptions.ConnectionError):
        connect(with_tls_defaults(without_ca)).r.ping()
