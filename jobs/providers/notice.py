"""Interruption notices, as an instance itself learns of them: the part of the Provider protocol
that runs on the GPU side.

A provider describes where its instances read notices (`NoticeChannel`, from
`Provider.notice_channel`); bootstrap hands that description to the GPU-side worker, which
polls it (`open_notice_source(...).poll()`, see jobs.notice_watch):

- `imds` (aws): instance metadata, IMDSv2: a PUT for a session token, then
  `spot/instance-action` (an interruption: `{"action": "terminate", "time": ...}`) and
  `events/recommendations/rebalance` (a rebalance recommendation: `{"noticeTime": ...}`);
  404 means no notice. The base URL is `Settings.aws_metadata_url`.
- `file` (local): a JSON list of notices in the instance's home, written by the local provider
  (`LocalProvider.preempt(..., notice_s=...)` and its random preemptions with `notice_s`).

A source that cannot be read (metadata service down, a torn file) reports no notice and is read
again at the next poll: a notice is an optimisation, losing one costs only the work since the
last checkpoint, as a preemption without notice does.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

IMDS_TOKEN_TTL_S = 21600
IMDS_TIMEOUT_S = 2.0
INSTANCE_ACTION = "latest/meta-data/spot/instance-action"
REBALANCE = "latest/meta-data/events/recommendations/rebalance"


class NoticeKind(StrEnum):
    """What the provider announced."""

    INTERRUPTION = "interruption"
    """The instance will be taken away at `Notice.at`."""
    REBALANCE = "rebalance"
    """The instance is at elevated risk of interruption; it may well run on."""


class Notice(BaseModel):
    """One notice the instance was given."""

    model_config = ConfigDict(frozen=True)

    kind: NoticeKind
    at: float = Field(..., description="Interruption: when it happens; rebalance: when issued.")
    action: str = Field("", description="Interruption: terminate, stop or hibernate.")

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at).astimezone().isoformat(timespec="seconds")
        if self.kind is NoticeKind.INTERRUPTION:
            return f"interruption notice ({self.action or 'terminate'} at {when})"
        return f"rebalance recommendation (issued {when})"


class NoticeChannel(BaseModel):
    """Where an instance reads its notices (sent to the GPU-side worker as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["imds", "file"]
    location: str = Field(..., description="imds: the metadata base URL; file: its path.")
    poll_s: float = Field(5.0, gt=0, description="Seconds between two reads.")


class NoticeSource(Protocol):
    """What the GPU-side poller reads."""

    def poll(self) -> list[Notice]:
        """Every notice in force now (the same notice is reported at each poll)."""
        ...


def open_notice_source(channel: NoticeChannel) -> NoticeSource:
    if channel.kind == "imds":
        return ImdsNotices(channel.location)
    return FileNotices(Path(channel.location))


class ImdsNotices:
    """EC2 instance metadata (IMDSv2) as a notice source."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + "/", timeout=IMDS_TIMEOUT_S, transport=transport
        )
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"ImdsNotices({str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    def poll(self) -> list[Notice]:
        try:
            action = self._get(INSTANCE_ACTION)
            rebalance = self._get(REBALANCE)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("instance metadata unreadable (%s); no notice this time", exc)
            return []
        notices = []
        if action is not None:
            notices.append(
                Notice(
                    kind=NoticeKind.INTERRUPTION,
                    at=_epoch(action["time"]),
                    action=str(action.get("action", "")),
                )
            )
        if rebalance is not None:
            notices.append(Notice(kind=NoticeKind.REBALANCE, at=_epoch(rebalance["noticeTime"])))
        return notices

    def _get(self, path: str) -> dict[str, str] | None:
        """The JSON document at `path`, None on 404; a fresh token once if the old one lapsed."""
        for _ in range(2):
            if self._token is None:
                self._token = self._new_token()
            response = self._client.get(path, headers={"X-aws-ec2-metadata-token": self._token})
            if response.status_code == 401:
                self._token = None
                continue
            if response.status_code == 404:
                return None
            response.raise_for_status()
            document = json.loads(response.text)
            if not isinstance(document, dict):
                raise ValueError(f"{path}: expected a JSON object, got {response.text[:80]!r}")
            return document
        raise ValueError(f"{path}: the metadata service refused a fresh token")

    def _new_token(self) -> str:
        response = self._client.put(
            "latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_S)},
        )
        response.raise_for_status()
        return response.text


def _epoch(stamp: str) -> float:
    """An IMDS timestamp (`2026-12-03T14:22:00Z`) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


_NOTICES = TypeAdapter(list[Notice])


class FileNotices:
    """A JSON list of notices in a file (the local provider's instances)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def poll(self) -> list[Notice]:
        try:
            return _NOTICES.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValidationError) as exc:
            log.warning("notice file %s unreadable (%s); no notice this time", self.path, exc)
            return []


def notices_json(notices: list[Notice]) -> str:
    """What a notice file holds (`FileNotices` reads it)."""
    return _NOTICES.dump_json(notices, indent=2).decode()
