"""The S3 store (`s3://bucket/prefix`; AWS S3, or any S3-compatible service through
`SAEFLEET_STORE_ENDPOINT_URL`): boto3 with SigV4, and presigned multipart uploads for instances.

Every file goes up as a multipart upload with SHA-256 checksums (`ChecksumAlgorithm=SHA256`, each
part carrying its `x-amz-checksum-sha256`), so the object's stored checksum is the composite of
its parts' digests and `matches` compares it, from HeadObject, with the manifest: nothing is
downloaded. An instance never holds credentials: the control plane creates the upload, hands it
presigned part URLs that expire (`presign_upload`, re-issued by `reissue`), and completes it.

botocore's and the service's errors become StoreError (retryable) or StoreConfigError (a bucket
that does not exist or denies access, no credentials) here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jobs.objectstore import (
    ObjectEntry,
    StoreConfigError,
    StoreError,
    composite_sha256,
)
from jobs.upload_plans import (
    UPLOAD_URL_EXPIRY_S,
    CompletedPart,
    PresignedPart,
    UploadPlan,
    unsigned_parts,
)

CONTENT_TYPE = "application/octet-stream"
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")
_DENIED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class S3Store:
    """An S3 bucket (and key prefix) as the store."""

    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, cache_root: Path
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._cache_root = cache_root / bucket / prefix
        config = Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5})
        self._client: Any = boto3.client("s3", endpoint_url=endpoint_url, config=config)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """StoreConfigError naming the problem unless the bucket exists and lets us in."""
        what = f"store {self.url}"
        try:
            with _errors(what):
                self._client.head_bucket(Bucket=self.bucket)
        except _NotThere:
            raise StoreConfigError(f"{what}: bucket does not exist") from None
        except StoreConfigError as exc:
            raise StoreConfigError(f"{exc} (the bucket denies access)") from None
        except StoreError as exc:
            raise StoreConfigError(f"{exc} (cannot use the bucket)") from None

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def local_dir(self, prefix: str) -> Path:
        return self._cache_root / prefix

    # ---- objects ------------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, entry: ObjectEntry) -> None:
        plan = self.presign_upload(key, entry)
        done = []
        with _errors(f"upload of {key}"), path.open("rb") as handle:
            for part in plan.parts:
                handle.seek(part.offset)
                reply = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=plan.key,
                    UploadId=plan.upload_id,
                    PartNumber=part.number,
                    Body=handle.read(part.size),
                    ChecksumSHA256=part.sha256,
                )
                done.append(
                    CompletedPart(number=part.number, etag=reply["ETag"], sha256=part.sha256)
                )
        self.complete_upload(plan, done)

    def put_bytes(self, key: str, data: bytes) -> None:
        with _errors(f"put of {key}"):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                ContentType=CONTENT_TYPE,
                ChecksumAlgorithm="SHA256",
            )

    def get_bytes(self, key: str) -> bytes | None:
        try:
            with _errors(f"get of {key}"):
                reply = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
                return bytes(reply["Body"].read())
        except _NotThere:
            return None

    def list_names(self, prefix: str) -> list[str]:
        base = self._full(prefix).rstrip("/") + "/"
        names: set[str] = set()
        with _errors(f"listing {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                names.update(
                    p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                )
                names.update(o["Key"][len(base) :] for o in page.get("Contents", []))
        return sorted(names)

    def matches(self, key: str, entry: ObjectEntry) -> bool:
        """Size and stored composite SHA-256 equal the manifest's (HeadObject only)."""
        try:
            with _errors(f"head of {key}"):
                head = self._client.head_object(
                    Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
                )
        except _NotThere:
            return False
        stored = str(head.get("ChecksumSHA256") or "")
        digest, _, count = stored.partition("-")  # AWS appends "-<parts>" to a composite
        if count and int(count) != len(entry.part_sha256):
            return False
        return head["ContentLength"] == entry.size and digest == composite_sha256(entry.part_sha256)

    def download(self, prefix: str, names: list[str], dest: Path) -> None:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with _errors(f"download of {prefix}/{name}"):
                self._client.download_file(self.bucket, self._full(f"{prefix}/{name}"), str(target))

    def delete_prefix(self, prefix: str) -> None:
        base = self._full(prefix).rstrip("/") + "/"
        with _errors(f"delete of {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    # ---- presigned multipart uploads ----------------------------------------------------------

    def presign_upload(
        self, key: str, entry: ObjectEntry, expires_s: int = UPLOAD_URL_EXPIRY_S
    ) -> UploadPlan:
        """Start a multipart upload of `entry` under `key` and presign a URL per part."""
        with _errors(f"starting the upload of {key}"):
            upload = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self._full(key),
                ContentType=CONTENT_TYPE,
                ChecksumAlgorithm="SHA256",
            )
        parts = unsigned_parts(entry)
        plan = UploadPlan(key=self._full(key), upload_id=upload["UploadId"], parts=parts)
        return self.reissue(plan, expires_s)

    def reissue(self, plan: UploadPlan, expires_s: int = UPLOAD_URL_EXPIRY_S) -> UploadPlan:
        """The same upload with fresh part URLs (an instance asks when its URLs expire)."""
        expires_at = time.time() + expires_s
        parts = [
            part.model_copy(
                update={"url": self._part_url(plan, part, expires_s), "expires_at": expires_at}
            )
            for part in plan.parts
        ]
        return plan.model_copy(update={"parts": parts})

    def _part_url(self, plan: UploadPlan, part: PresignedPart, expires_s: int) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": plan.key,
            "UploadId": plan.upload_id,
            "PartNumber": part.number,
            "ChecksumSHA256": part.sha256,
        }
        with _errors(f"presigning {plan.key}"):
            url: str = self._client.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=expires_s
            )
        return url

    def presign_download(self, key: str, expires_s: int = UPLOAD_URL_EXPIRY_S) -> str:
        """A GET URL for `key` that expires (a resumed attempt downloads its checkpoint)."""
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        with _errors(f"presigning {key}"):
            url: str = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_s
            )
        return url

    def complete_upload(self, plan: UploadPlan, done: list[CompletedPart]) -> None:
        parts = [
            {"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.sha256}
            for p in sorted(done, key=lambda p: p.number)
        ]
        with _errors(f"completing the upload of {plan.key}"):
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=plan.key,
                UploadId=plan.upload_id,
                MultipartUpload={"Parts": parts},
            )

    def abort_upload(self, plan: UploadPlan) -> None:
        try:
            with _errors(f"aborting the upload of {plan.key}"):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=plan.key, UploadId=plan.upload_id
                )
        except _NotThere:
            pass


class _NotThere(StoreError):
    """The object or upload does not exist (mapped from a 404)."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Map botocore's errors for `what` onto ours."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in _MISSING or code == "NoSuchUpload":
            raise _NotThere(f"{what}: not found") from None
        if code in _DENIED:
            raise StoreConfigError(f"{what}: access denied ({code})") from None
        raise StoreError(f"{what}: {code}") from None
    except BotoCoreError as exc:
        raise StoreError(f"{what}: {exc}") from None
