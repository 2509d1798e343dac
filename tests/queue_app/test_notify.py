"""notify() never blocks or fails its caller and never puts the webhook URL in a message;
deliver() posts Slack-compatible JSON and retries what may succeed later."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry

from queue_app.celery_app import CONTROL_QUEUE, make_app
from queue_app.notify import DELIVER_TASK, Event, deliver, notify, retry_countdown, slack_payload
from queue_app.processes import free_port
from queue_app.settings import Settings
from queue_app.store import Store
from tests.support.webhook import Webhook, running_webhook


@pytest.fixture(autouse=True)
def test_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """notify publishes with an app on the test Redis (the module's app was made at import)."""
    from queue_app import notify as module

    monkeypatch.setattr(module, "app", make_app(settings))


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    with running_webhook() as hook:
        monkeypatch.setenv("SAEFLEET_WEBHOOK_URL", hook.url)
        yield hook


def queued_tasks(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of each message waiting in the control queue."""
    out = []
    for raw in store.r.lrange(CONTROL_QUEUE, 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], kwargs))
    return out


def test_without_a_webhook_nothing_is_queued(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    notify(Event.JOB_FAILED, job="j1", reason="boom")
    monkeypatch.setenv("SAEFLEET_WEBHOOK_URL", "")  # a blank line in .env
    notify(Event.JOB_FAILED, job="j1", reason="boom")
    assert store.r.llen(CONTROL_QUEUE) == 0


def test_the_message_carries_the_event_and_redacted_fields_never_the_url(
    webhook: Webhook, store: Store
) -> None:
    notify(
        Event.JOB_FAILED,
        sweep="sw1",
        job="sw1-0000",
        attempt=2,
        reason="cannot reach redis://:hunter2secret@10.0.0.1:6379/0",
    )
    [(task, kwargs)] = queued_tasks(store)
    assert task == DELIVER_TASK
    assert kwargs["event"] == "job_failed"
    assert kwargs["fields"]["reason"] == "cannot reach redis://:***@10.0.0.1:6379/0"
    assert webhook.url not in json.dumps(kwargs)


def test_notify_neither_raises_nor_blocks_when_the_broker_is_down(
    settings: Settings, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from queue_app import notify as module

    down = Settings(home=home, redis_url=f"redis://:x@127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(module, "app", make_app(down))
    monkeypatch.setenv("SAEFLEET_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    started = time.monotonic()
    notify(Event.SWEEP_FINISHED, sweep="sw1", summary="3 SUCCEEDED")  # no exception
    assert time.monotonic() - started < 5.0


def test_an_unknown_event_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    monkeypatch.setenv("SAEFLEET_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    notify("no_such_event", job="j1")
    assert store.r.llen(CONTROL_QUEUE) == 0


def test_slack_payload_has_a_text_line_and_the_fields() -> None:
    payload = slack_payload("sweep_finished", {"sweep": "sw1", "summary": "2 SUCCEEDED"}, 1.0)
    assert payload["text"] == "saefleet: sweep finished (sweep=sw1): 2 SUCCEEDED"
    fields = payload["attachments"][0]["fields"]
    assert {f["title"]: f["value"] for f in fields} == {"sweep": "sw1", "summary": "2 SUCCEEDED"}


def test_deliver_posts_and_retries_only_what_may_succeed_later(webhook: Webhook) -> None:
    deliver("job_failed", {"job": "j1", "reason": "boom"}, 1.0)
    assert webhook.bodies()[0]["text"] == "saefleet: job failed (job=j1): boom"

    webhook.replies.append(503)
    with pytest.raises(Retry):
        deliver("job_failed", {"job": "j1"}, 1.0)

    webhook.replies.append(404)  # a wrong URL: retrying cannot help
    deliver("job_failed", {"job": "j1"}, 1.0)
    assert len(webhook.bodies()) == 3


def test_retry_countdown_honours_retry_after_and_stays_short() -> None:
    assert retry_countdown(0) == 2.0
    assert retry_countdown(3, "7") == 7.0
    assert retry_countdown(20) == 40.0  # below the broker's visibility timeout
    assert retry_countdown(0, "soon") == 2.0
