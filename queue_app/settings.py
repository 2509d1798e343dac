"""Process-wide configuration: `SAEFLEET_*` environment variables, validated once.

Everything that other modules need to know about where things live (the home directory, the
embedded Redis, artifact and checkpoint paths) comes from here, so that one function owns each
path. Secrets (the Redis password, provider keys) are read from files or the environment on
demand and are never part of a repr.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_FILE_MODE = 0o600


class Settings(BaseSettings):
    """Configuration read from `SAEFLEET_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SAEFLEET_", extra="ignore", frozen=True)

    home: Path = Field(
        default_factory=lambda: Path.home() / ".saefleet",
        description="Root of everything saefleet writes: Redis data, logs, artifacts, keys.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Use this Redis instead of starting the embedded one (broker, results, state).",
    )
    redis_url_file: Path | None = Field(
        default=None, description="A file holding the Redis URL (used by GPU-side workers)."
    )
    fleet_broker_url: SecretStr | None = Field(
        default=None,
        description="Broker URL that GPU-side workers use directly instead of the SSH tunnel.",
    )
    redis_port: int = Field(default=6390, description="Port of the embedded Redis (loopback).")
    watchdog_interval_s: float = Field(default=30.0, gt=0, description="Beat tick interval.")
    poll_interval_s: float = Field(
        default=5.0, gt=0, description="How often waiting stages re-check (task retry countdown)."
    )
    daily_cap_usd: float | None = Field(
        default=None, ge=0, description="Global spend cap per UTC day across every sweep."
    )
    result_expires_s: int = Field(
        default=14 * 24 * 3600,
        gt=0,
        description="Lifetime of task results and chord state; keep above the longest sweep.",
    )
    visibility_timeout_s: int = Field(
        default=60, gt=0, description="Broker redelivers an unacknowledged message after this."
    )
    local_preempt_rate: float = Field(
        default=0.0,
        ge=0,
        description="Local provider: expected spot preemptions per instance-hour for chaos runs "
        "(a sweep's provider.preempt_rate takes precedence).",
    )
    aws_metadata_url: str = Field(
        default="http://169.254.169.254",
        description="aws: the instance metadata service's base URL, where GPU-side workers read "
        "interruption notices (tests serve a fake on loopback).",
    )
    notice_poll_s: float = Field(
        default=5.0, gt=0, description="How often a GPU-side worker reads interruption notices."
    )
    local_reuse_venv: bool = Field(
        default=True,
        description="Local provider: run the instance's worker with this venv's Python instead "
        "of creating a venv on the instance (the code bundle is still uploaded and used).",
    )
    local_cpu_threads: int | None = Field(
        default=None,
        gt=0,
        description="Local provider: torch CPU threads per instance (default: this machine's "
        "cores divided by the sweep's jobs; set 1 where several sweeps share the machine).",
    )
    local_instances_root: Path | None = Field(
        default=None,
        validation_alias="SAEFLEET_LOCAL_INSTANCES_DIR",
        description="Local provider: where its instances live (default: SAEFLEET_HOME/"
        "local-instances); two homes that share it see one fleet, like one cloud account.",
    )
    store_url: str | None = Field(
        default=None,
        description="Where checkpoints and artifacts live: file:///path or s3://bucket/prefix "
        "(default: file://SAEFLEET_HOME/artifacts).",
    )
    store_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of a non-AWS S3-compatible store (R2, MinIO, GCS interoperability).",
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    service_name: str = Field(
        default="saefleet", description="Names this process's log file (logs/<name>.log)."
    )
    worker_role: Literal["control", "gpu"] = Field(
        default="control", description="Which task modules a Celery worker of this process loads."
    )
    control_concurrency: int = Field(
        default=4, ge=1, le=64, description="Processes of the control worker."
    )
    boot_timeout_s: float = Field(
        default=20 * 60, gt=0, description="How long an instance may take to become active."
    )
    worker_start_timeout_s: float = Field(
        default=10 * 60, gt=0, description="How long bootstrap waits for the GPU-side worker."
    )
    watchdog_lock_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description="Expiry of the one-tick-at-a-time lock: renewed while a tick runs, so a "
        "killed tick frees it this soon.",
    )
    watchdog_ssh_timeout_s: float = Field(
        default=10.0, gt=0, description="Liveness: connect + command timeout of one SSH probe."
    )
    watchdog_ssh_workers: int = Field(
        default=128, ge=1, le=512, description="Liveness: SSH probes run at once (thread pool)."
    )
    watchdog_liveness_misses: int = Field(
        default=3, ge=1, description="Liveness: consecutive failed probes that mean lost (K)."
    )
    watchdog_heartbeat_max_age_s: float = Field(
        default=120.0,
        gt=0,
        description="Liveness: a heartbeat this segment wrote that is older, from a trainer "
        "process that is gone, is a miss (a trainer that still runs may be in its final evals).",
    )
    watchdog_stuck_minutes: float = Field(
        default=30.0,
        gt=0,
        description="No training progress for this long = stuck = lost (T); must exceed the "
        "longest model load of a first segment.",
    )
    watchdog_idle_grace_s: float = Field(
        default=3600.0,
        gt=0,
        description="A live attempt whose job has not changed state for this long outside "
        "training holds an idle instance: it is treated as lost.",
    )
    watchdog_orphan_grace_s: float = Field(
        default=300.0,
        gt=0,
        description="An instance of ours with no live job is reaped after this.",
    )
    watchdog_providers: tuple[str, ...] = Field(
        default=("local",),
        description="Providers whose instance lists the orphan reaper scans even when no live "
        'job uses them (JSON list, e.g. ["local", "lambda"]).',
    )
    cost_cap_grace_s: float = Field(
        default=300.0,
        gt=0,
        description="After a cost-cap stop request, how long training may take to checkpoint "
        "before the watchdog caps the job and terminates its instance anyway.",
    )
    cost_warn_fraction: float = Field(
        default=0.8, gt=0, lt=1, description="Log a warning when spend reaches this cap fraction."
    )
    lambda_api_key_file: Path | None = Field(
        default=None, description="File holding the Lambda Cloud API key (else LAMBDA_API_KEY)."
    )
    lambda_base_url: str = Field(
        default="https://cloud.lambda.ai/api/v1", description="Lambda Cloud API base URL."
    )
    flower_user: str = Field(default="saefleet", description="Flower's basic-auth user name.")
    flower_password: SecretStr | None = Field(
        default=None,
        description="Flower's basic-auth password (unset: generated once into a 0600 file).",
    )
    flower_address: str = Field(
        default="127.0.0.1", description="Address Flower binds (loopback unless you need more)."
    )
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower's HTTP port.")
    webhook_url: SecretStr | None = Field(
        default=None,
        description="Slack-compatible incoming webhook that receives notifications (a secret).",
    )

    # ---- paths: one function per kind of path -------------------------------------------------

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files of the control-plane services."""
        return self.home / "run"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def known_hosts_dir(self) -> Path:
        return self.home / "known_hosts"

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"

    @property
    def local_instances_dir(self) -> Path:
        return self.local_instances_root or self.home / "local-instances"

    @property
    def flower_dir(self) -> Path:
        """Flower's generated password and its persistent database."""
        return self.home / "flower"

    def sweep_dir(self, sweep_id: str) -> Path:
        return self.home / "artifacts" / sweep_id

    def job_dir(self, sweep_id: str, job_id: str) -> Path:
        return self.sweep_dir(sweep_id) / job_id

    def checkpoints_dir(self, sweep_id: str, job_id: str) -> Path:
        """Where pulled checkpoints of a job land (one folder per checkpoint)."""
        return self.job_dir(sweep_id, job_id) / "checkpoints"

    # ---- Redis -----------------------------------------------------------------------------------

    @property
    def embedded_redis(self) -> bool:
        """True when saefleet runs its own redis-server under `home`."""
        return self.redis_url is None and self.redis_url_file is None

    @cached_property
    def broker_url(self) -> str:
        """The Redis URL every process of the control plane uses (contains the password)."""
        if self.redis_url is not None:
            return with_tls_defaults(self.redis_url.get_secret_value())
        if self.redis_url_file is not None:
            return with_tls_defaults(self.redis_url_file.read_text().strip())
        password = quote(self.redis_password(), safe="")
        return f"redis://:{password}@127.0.0.1:{self.redis_port}/0"

    def redis_password(self) -> str:
        """The embedded Redis password, generated on first use into a 0600 file."""
        return read_or_create_secret(self.redis_dir / "password")


def with_tls_defaults(url: str) -> str:
    """A `rediss://` (TLS) URL with certificate verification on unless the URL says otherwise:
    Celery refuses a rediss URL without `ssl_cert_reqs`; `ssl_ca_certs=<file>` names a private CA.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs=" in parts.query:
        return url
    query = f"{parts.query}&ssl_cert_reqs=required" if parts.query else "ssl_cert_reqs=required"
    return urlunsplit(parts._replace(query=query))


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """Return the secret stored in `path`, creating it (mode 0600) when missing.

    The file appears atomically (written aside, then hard-linked into place), so a concurrent
    reader never sees it empty and two creators agree on one value.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(nbytes))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; use its value
    finally:
        tmp.unlink()
    return path.read_text().strip()


def get_settings() -> Settings:
    """Settings from the current environment. Building them takes ~2 ms (pydantic-settings
    inspects every field), so the frozen result is reused until a variable they depend on
    changes: every task calls this, several times."""
    key = tuple((k, v) for k, v in os.environ.items() if k.startswith(_ENV_KEYS))
    settings = _settings_cache.get(key)
    if settings is None:
        _settings_cache.clear()
        settings = _settings_cache[key] = Settings()
    return settings


_ENV_KEYS = ("SAEFLEET_", "HOME")  # the prefix Settings reads, and what its home defaults to
_settings_cache: dict[tuple[tuple[str, str], ...], Settings] = {}
