"""The upload board: how an instance and the control plane agree on each checkpoint upload,
through one Redis hash per attempt (`sf:job:{job}:attempt:{a}:uploads`).

Every field is written by one side only, so neither needs a lock:

| field | written by | holds |
| --- | --- | --- |
| `req:{segment}` | instance | the checkpoint's name and store manifest (sizes, SHA-256 per part) |
| `grant:{segment}` | control plane | upload plans (URLs expiring in hours); the re-issue answered |
| `reissue:{segment}` | instance | how many times it asked for fresh URLs |
| `parts:{segment}` | instance | the parts it uploaded (what completing the uploads needs) |
| `failed:{segment}` | instance | why it gave up |
| `outcome:{segment}` | control plane | kept, rejected (does not verify) or failed; grant deleted |

A segment's checkpoint counts (is kept) only once the control plane has completed the uploads,
written the manifest last and verified it in the store (jobs.upload_grants). The URLs live in
Redis only while the upload needs them, and the hash expires a week after its last write.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis
from pydantic import BaseModel

from jobs.objectstore import StoreManifest
from jobs.upload_plans import CompletedPart, UploadPlan
from queue_app.keys import attempt_key

BOARD_TTL_S = 7 * 24 * 3600


class UploadRequest(BaseModel):
    """An instance asks to upload a segment's checkpoint."""

    name: str
    """The checkpoint's folder name (`step-…`)."""
    manifest: StoreManifest


class UploadGrant(BaseModel):
    """The control plane's answer: one plan per manifest object, in the manifest's order."""

    plans: list[UploadPlan]
    answers_reissue: int = 0
    """The instance's re-issue request these URLs answer (0: the first grant)."""


class UploadReport(BaseModel):
    """The parts the instance uploaded, one list per plan."""

    parts: list[list[CompletedPart]]


class Outcome(StrEnum):
    KEPT = "kept"
    """The checkpoint verifies in the store and is the job's latest (or an older one is)."""
    REJECTED = "rejected"
    """The uploads did not complete or verify (a corrupt or missing part)."""
    FAILED = "failed"
    """The instance gave up on the upload."""


@dataclass
class UploadEntry:
    """Everything the board holds about one segment's upload."""

    request: UploadRequest | None = None
    grant: UploadGrant | None = None
    reissue: int = 0
    report: UploadReport | None = None
    failed: str | None = None
    outcome: Outcome | None = None


class UploadBoard:
    """One attempt's board."""

    def __init__(self, r: redis.Redis, job_id: str, attempt: int) -> None:
        self.r = r
        self.key = f"{attempt_key(job_id, attempt)}:uploads"

    def _set(self, field: str, value: str) -> None:
        with self.r.pipeline() as pipe:
            pipe.hset(self.key, field, value)
            pipe.expire(self.key, BOARD_TTL_S)
            pipe.execute()

    def _get(self, field: str) -> str | None:
        value = self.r.hget(self.key, field)
        return value.decode() if isinstance(value, bytes) else value

    # ---- the instance's side ------------------------------------------------------------------

    def request(self, segment: int, request: UploadRequest) -> None:
        self._set(f"req:{segment}", request.model_dump_json())

    def ask_reissue(self, segment: int, count: int) -> None:
        self._set(f"reissue:{segment}", str(count))

    def report(self, segment: int, report: UploadReport) -> None:
        self._set(f"parts:{segment}", report.model_dump_json())

    def fail(self, segment: int, error: str) -> None:
        self._set(f"failed:{segment}", error[:2000])

    def grant(self, segment: int) -> UploadGrant | None:
        raw = self._get(f"grant:{segment}")
        return UploadGrant.model_validate_json(raw) if raw else None

    def outcome(self, segment: int) -> Outcome | None:
        raw = self._get(f"outcome:{segment}")
        return Outcome(raw) if raw else None

    # ---- the control plane's side -------------------------------------------------------------

    def entries(self) -> dict[int, UploadEntry]:
        """Every segment's upload, by segment."""
        entries: dict[int, UploadEntry] = {}
        for raw_field, raw_value in self.r.hgetall(self.key).items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            kind, _, segment = field.partition(":")
            entry = entries.setdefault(int(segment), UploadEntry())
            if kind == "req":
                entry.request = UploadRequest.model_validate_json(value)
            elif kind == "grant":
                entry.grant = UploadGrant.model_validate_json(value)
            elif kind == "reissue":
                entry.reissue = int(value)
            elif kind == "parts":
                entry.report = UploadReport.model_validate_json(value)
            elif kind == "failed":
                entry.failed = value
            elif kind == "outcome":
                entry.outcome = Outcome(value)
        return entries

    def set_grant(self, segment: int, grant: UploadGrant) -> None:
        self._set(f"grant:{segment}", grant.model_dump_json())

    def settle(self, segment: int, outcome: Outcome) -> None:
        """Record the outcome and drop the URLs (nothing needs them any more)."""
        with self.r.pipeline() as pipe:
            pipe.hset(self.key, f"outcome:{segment}", outcome.value)
            pipe.hdel(self.key, f"grant:{segment}")
            pipe.expire(self.key, BOARD_TTL_S)
            pipe.execute()
