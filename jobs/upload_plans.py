"""What the control plane hands an instance so it can move a checkpoint to or from the store
without credentials: upload plans (a URL per part, presigned for S3, a staging file for the
file store) and download plans (a URL per object), and what the instance reports back.

Both sides use these models; the instance never opens the store itself."""

from __future__ import annotations

from pydantic import BaseModel

from jobs.objectstore import ObjectEntry

UPLOAD_URL_EXPIRY_S = 3 * 3600
"""Presigned URLs expire this soon; the control plane re-issues them on request."""


class PresignedPart(BaseModel):
    """One part of an upload: its bytes are `[offset, offset + size)` of the file."""

    number: int
    offset: int
    size: int
    sha256: str
    """base64, sent as x-amz-checksum-sha256 (signed into the URL)."""
    url: str
    """Where the part goes: an `https://`/`http://` presigned URL, or the file store's
    `file://` staging file (the part is written at `offset`)."""
    expires_at: float
    """Unix time after which the URL is refused (by S3; ours are checked by the uploader)."""


class UploadPlan(BaseModel):
    """A multipart upload an instance can complete without credentials."""

    key: str
    upload_id: str
    parts: list[PresignedPart]


class CompletedPart(BaseModel):
    number: int
    etag: str
    sha256: str


class DownloadObject(BaseModel):
    """One object of a folder to download: a presigned GET (or `file://`) URL and what the
    downloaded file must be."""

    name: str
    size: int
    sha256: str
    """SHA-256 of the whole object, hex."""
    url: str


class RestorePlan(BaseModel):
    """The checkpoint a resumed attempt starts from, as the instance downloads it."""

    name: str
    objects: list[DownloadObject]


def unsigned_parts(entry: ObjectEntry) -> list[PresignedPart]:
    """The parts of an upload of `entry`, before any URL is issued."""
    return [
        PresignedPart(
            number=i + 1,
            offset=i * entry.part_size,
            size=min(entry.part_size, entry.size - i * entry.part_size),
            sha256=sha,
            url="",
            expires_at=0.0,
        )
        for i, sha in enumerate(entry.part_sha256)
    ]
