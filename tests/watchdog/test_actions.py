"""supervise_training sends each training segment under the task id the watchdog revokes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from jobs import supervise
from queue_app.celery_app import segment_task_id


def test_segment_task_id_matches_what_supervise_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(supervise.app, "send_task", lambda *a, **kw: sent.append(kw))
    ctx = SimpleNamespace(
        ref=SimpleNamespace(job_id="sw1-0003", attempt=2),
        store=SimpleNamespace(claim_segment=lambda *a: True),
    )
    instance = SimpleNamespace(instance_id="local-0000abcd")

    supervise._send_segment(ctx, instance, 7)  # type: ignore[arg-type]

    assert sent[0]["task_id"] == segment_task_id("sw1-0003", 2, 7)
