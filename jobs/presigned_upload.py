"""The instance's side of a store upload: PUT each part of a file to its presigned URL (httpx, no
credentials), asking the control plane for fresh URLs when they have expired. A `file://` URL
(the file store, reached by the local provider's instances) takes the part at its offset in the
staging file instead: the same plan, the same expiry, the same completion.

Expiry is checked here, before a part is sent, from the plan's `expires_at` (with a margin for
the part's transfer), and again when the service answers 403 "Request has expired": some
S3-compatible services (and moto) accept an expired URL, so the uploader cannot rely on a refusal.
Corruption is not this module's concern: the control plane's manifest check catches it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from jobs.objectstore import StoreError
from jobs.objectstore_s3 import CONTENT_TYPE
from jobs.upload_plans import CompletedPart, PresignedPart, UploadPlan

log = logging.getLogger(__name__)

EXPIRY_MARGIN_S = 300.0
"""A URL that expires sooner than this is re-issued before use."""
PART_TIMEOUT_S = 600.0

Reissue = Callable[[UploadPlan], UploadPlan]
"""Asks the control plane for the same upload with fresh URLs."""


def upload_file(
    path: Path,
    plan: UploadPlan,
    reissue: Reissue,
    clock: Callable[[], float] = time.time,
    client: httpx.Client | None = None,
) -> list[CompletedPart]:
    """Upload every part of `path` as `plan` says; returns what completing the upload needs."""
    own = client is None
    http = client or httpx.Client(timeout=PART_TIMEOUT_S)
    done = []
    try:
        with path.open("rb") as handle:
            for index in range(len(plan.parts)):
                if plan.parts[index].expires_at - EXPIRY_MARGIN_S <= clock():
                    log.info("presigned URLs of %s expired: asking for new ones", plan.key)
                    plan = reissue(plan)
                part = plan.parts[index]
                handle.seek(part.offset)
                body = handle.read(part.size)
                etag = _put_part(http, part, body)
                if etag is None:  # the service says expired after all
                    plan = reissue(plan)
                    etag = _put_part(http, plan.parts[index], body)
                if etag is None:
                    raise StoreError(f"part {part.number} of {plan.key}: URL refused as expired")
                done.append(CompletedPart(number=part.number, etag=etag, sha256=part.sha256))
    finally:
        if own:
            http.close()
    return done


def _put_part(http: httpx.Client, part: PresignedPart, body: bytes) -> str | None:
    """The part's ETag, or None when the URL was refused as expired."""
    if part.url.startswith("file://"):
        return _write_part(part, body)
    headers = {"Content-Type": CONTENT_TYPE, "x-amz-checksum-sha256": part.sha256}
    try:
        reply = http.put(part.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise StoreError(f"upload of part {part.number}: {exc}") from None
    if reply.status_code == 403 and "expired" in reply.text.lower():
        return None
    if reply.status_code != 200 or "etag" not in reply.headers:
        raise StoreError(f"upload of part {part.number}: HTTP {reply.status_code}")
    return reply.headers["etag"]


def _write_part(part: PresignedPart, body: bytes) -> str:
    """Write the part at its offset in the file store's staging file; its ETag is its SHA-256."""
    path = Path(unquote(urlsplit(part.url).path))
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise StoreError(f"upload of part {part.number}: {exc.strerror}") from None
    try:
        os.pwrite(fd, body, part.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(body).hexdigest()
