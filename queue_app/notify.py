"""Notifications: `notify(event, **fields)` hands an event to the `saefleet.notify.deliver`
task, which POSTs it to SAEFLEET_WEBHOOK_URL as Slack-compatible JSON and retries in the
background.

`notify` never blocks or fails its caller: without a webhook it does nothing, and a failure to
enqueue is logged and swallowed. The URL is a secret: it never travels in a message; the worker
reads it from its own settings. Field values pass through the log redactor before they are
enqueued, so no secret reaches Redis or the webhook either.
"""

from __future__ import annotations

import json
import logging
import time
from enum import StrEnum
from typing import Any

import httpx
from celery import Task

from queue_app.celery_app import app
from queue_app.logs import redact, register_secret
from queue_app.settings import get_settings

log = logging.getLogger(__name__)

DELIVER_TASK = "saefleet.notify.deliver"
MAX_DELIVERY_RETRIES = 10
MAX_COUNTDOWN_S = 40.0  # below the broker's visibility timeout, like every control-plane wait
HTTP_TIMEOUT_S = 10.0
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class Event(StrEnum):
    """What a user wants to hear about."""

    JOB_FAILED = "job_failed"
    JOB_PREEMPTED = "job_preempted"
    JOB_RESUMED = "job_resumed"
    SWEEP_FINISHED = "sweep_finished"
    COST_WARNING = "cost_warning"
    COST_CAP_HIT = "cost_cap_hit"


TITLES = {
    Event.JOB_FAILED: ("job failed", "danger"),
    Event.JOB_PREEMPTED: ("job preempted", "warning"),
    Event.JOB_RESUMED: ("job resumed", "good"),
    Event.SWEEP_FINISHED: ("sweep finished", "good"),
    Event.COST_WARNING: ("cost warning", "warning"),
    Event.COST_CAP_HIT: ("cost cap hit", "danger"),
}
HEADLINE_FIELDS = ("summary", "reason")


def webhook_url() -> str:
    """The configured webhook URL; empty when unset (an empty SAEFLEET_WEBHOOK_URL too)."""
    secret = get_settings().webhook_url
    return secret.get_secret_value().strip() if secret is not None else ""


def notify(event: Event | str, **fields: Any) -> None:
    """Queue `event` for the webhook (no-op without one). Fields are small JSON-able values:
    ids (sweep, job, attempt, instance), `reason`, `summary`, amounts. Never raises."""
    try:
        if not webhook_url():
            return
        name = Event(event).value
        clean = json.loads(redact(json.dumps(fields, default=str)))
        app.send_task(
            DELIVER_TASK,
            kwargs={"event": name, "fields": clean, "at": time.time()},
            ignore_result=True,  # no result subscription: it would retry for seconds
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
    except Exception as exc:
        log.warning("notification %s not queued: %s", event, redact(str(exc)))


def slack_payload(event: str, fields: dict[str, Any], at: float) -> dict[str, Any]:
    """Slack's incoming-webhook JSON: a text line plus an attachment listing the fields."""
    title, colour = TITLES[Event(event)]
    headline = next((str(fields[k]) for k in HEADLINE_FIELDS if fields.get(k)), "")
    ids = " ".join(f"{k}={fields[k]}" for k in ("sweep", "job", "attempt") if k in fields)
    text = (
        f"saefleet: {title}" + (f" ({ids})" if ids else "") + (f": {headline}" if headline else "")
    )
    return {
        "text": text,
        "attachments": [
            {
                "color": colour,
                "fields": [
                    {"title": k, "value": str(v), "short": len(str(v)) < 40}
                    for k, v in fields.items()
                ],
                "ts": int(at),
            }
        ],
    }


def retry_countdown(retries: int, retry_after: str | None = None) -> float:
    """Seconds before delivery retry `retries`+1: Retry-After when given, else 2**n, capped."""
    try:
        wanted = float(retry_after) if retry_after else 2.0 ** (retries + 1)
    except ValueError:
        wanted = 2.0 ** (retries + 1)
    return min(MAX_COUNTDOWN_S, max(1.0, wanted))


@app.task(bind=True, name=DELIVER_TASK, acks_late=True, ignore_result=True)
def deliver(task: Task, event: str, fields: dict[str, Any], at: float) -> None:
    """POST one notification; 429/5xx/network errors are retried, other 4xx are dropped."""
    url = webhook_url()
    if not url:
        log.info("notification %s dropped: SAEFLEET_WEBHOOK_URL is not set here", event)
        return
    register_secret(url)
    retry_after = None
    try:
        response = httpx.post(url, json=slack_payload(event, fields, at), timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {redact(str(exc))}"
    else:
        if response.is_success:
            log.info("notification %s delivered", event)
            return
        if response.status_code != 429 and response.status_code < 500:
            log.error(
                "the webhook refused notification %s with HTTP %d: check SAEFLEET_WEBHOOK_URL",
                event,
                response.status_code,
            )
            return
        problem = f"HTTP {response.status_code}"
        retry_after = response.headers.get("Retry-After")
    retries = task.request.retries
    if retries >= MAX_DELIVERY_RETRIES:
        log.error("notification %s given up after %d tries: %s", event, retries + 1, problem)
        return
    log.warning("notification %s not delivered (%s); retrying", event, problem)
    raise task.retry(countdown=retry_countdown(retries, retry_after), max_retries=None)
