"""The embedded Redis: a private redis-server with AOF on, loopback only, password required."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from queue_app.processes import ProcessError, redis_server_binary, spawn_detached


def write_config(data_dir: Path, port: int, password: str) -> Path:
    """A redis.conf for a private, durable Redis in `data_dir` (the file is 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "redis.conf"
    conf.touch(mode=0o600)
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode yes",
                f'requirepass "{password}"',
                f'dir "{data_dir}"',
                "appendonly yes",
                "appendfsync everysec",
                'appendfilename "appendonly.aof"',
                "save 300 1",
                "daemonize no",
                "maxmemory-policy noeviction",
                "",
            ]
        )
    )
    conf.chmod(0o600)
    return conf


def start_redis(data_dir: Path, port: int, password: str, log_path: Path) -> int:
    """Start redis-server detached and wait until it answers; returns its pid."""
    conf = write_config(data_dir, port, password)
    pid = spawn_detached([redis_server_binary(), str(conf)], log_path)
    wait_until_ready(f"redis://:{password}@127.0.0.1:{port}/0", log_path)
    return pid


def wait_until_ready(url: str, log_path: Path | None = None, timeout_s: float = 20.0) -> None:
    """PING until Redis answers (it may be replaying its AOF)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.ConnectionError:
            pass
        if time.monotonic() > deadline:
            hint = f"; see {log_path}" if log_path else ""
            raise ProcessError(f"redis did not answer within {timeout_s:.0f}s{hint}")
        time.sleep(0.05)
