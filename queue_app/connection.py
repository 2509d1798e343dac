"""The connection to Redis: a `Store` on a client whose lost connection is retried with
backoff (long for services, short for the CLI), and one such Store per process and URL."""

from __future__ import annotations

import functools

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from queue_app.settings import Settings, get_settings
from queue_app.store import Store

# How long a lost Redis connection is retried before a command fails: long-running services
# ride out Redis restarting and an SSH tunnel reconnecting under a GPU-side worker (without it a
# training segment died with the tunnel); the CLI says at once that Redis is unreachable.
SERVICE_RETRY_S = 30.0
CLI_RETRY_S = 2.0
CLI_SERVICE_NAME: str = Settings.model_fields["service_name"].default


def connect(url: str, retry_s: float = 0.0) -> Store:
    """A Store on a new connection pool to `url`; a lost connection is retried with backoff
    for about `retry_s` seconds."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        retry_on_timeout=True,
        retry=_retry_policy(retry_s),
        health_check_interval=10,
    )
    return Store(client)


def _retry_policy(budget_s: float) -> Retry:
    """Exponential backoff from 50 ms up to 2 s between tries, for about `budget_s`."""
    backoff = ExponentialBackoff(cap=2.0, base=0.05)
    retries, waited = 0, 0.0
    while waited < budget_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


@functools.cache
def _store_for(url: str, retry_s: float) -> Store:
    return connect(url, retry_s)


def get_store(settings: Settings | None = None) -> Store:
    """This process's Store for the configured Redis (one pool per URL)."""
    settings = settings or get_settings()
    retry_s = CLI_RETRY_S if settings.service_name == CLI_SERVICE_NAME else SERVICE_RETRY_S
    return _store_for(settings.broker_url, retry_s)
