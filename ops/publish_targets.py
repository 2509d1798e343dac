"""Where `sweep publish` copies to: a Hugging Face model repo (`hf://org/repo`, through
huggingface_hub's HfApi with the token from HF_TOKEN), an S3 prefix (`s3://bucket/prefix`, any
S3-compatible service) or a folder (`file:///path`), the last two through the store's own classes
(jobs.objectstore), so uploads carry checksums and are checked object by object afterwards.

A target first checks that it can be written and holds nothing (`prepare`, PublishRefused:
exit 2 before anything is copied), then takes a staged folder (`upload`). HfApi's errors become
ours here, with the token redacted from their text; the token is registered with the log
redactor as soon as it is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from jobs.objectstore import ObjectStore, StoreConfigError, describe_folder
from jobs.objectstore_file import FileStore
from ops.errors import PublishFailed, PublishRefused
from queue_app.logs import redact, register_secret
from queue_app.settings import Settings

HF_TOKEN_ENV = "HF_TOKEN"
HUB_REPO_TYPE = "model"
HUB_KEPT_FILES = {".gitattributes"}
"""Files a freshly created hub repo holds: a repo with only these counts as empty."""
SCHEMES = "hf://org/repo, s3://bucket/prefix or file:///path"


class PublishTarget(Protocol):
    """Somewhere a staged folder of SAEs can be copied to."""

    url: str

    def prepare(self, force: bool) -> None:
        """PublishRefused unless the target can be written and, without `force`, is empty."""

    def upload(self, folder: Path, force: bool, message: str) -> None:
        """Copy every file of `folder` (replacing what was there when `force`)."""


def open_target(url: str, settings: Settings, endpoint_url: str | None) -> PublishTarget:
    """The target `--to` names; PublishRefused for an unknown scheme or an incomplete URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.path in ("", "/"):
            raise PublishRefused(f"--to {url}: a file URL names a folder (file:///path)")
        return StoreTarget(url, FileStore(Path(unquote(parts.path))))
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not bucket or not prefix:
            raise PublishRefused(f"--to {url}: name a bucket and a prefix (s3://bucket/prefix)")
        from jobs.objectstore_s3 import S3Store

        endpoint = endpoint_url or settings.store_endpoint_url
        cache = settings.home / "store-cache"
        return StoreTarget(url, S3Store(bucket, prefix, endpoint, cache))
    if parts.scheme == "hf":
        return HubTarget.open(url, f"{parts.netloc}{parts.path}".strip("/"))
    raise PublishRefused(f"--to {url}: unknown scheme {parts.scheme!r} (use {SCHEMES})")


def overlaps(target_url: str, store_url: str) -> bool:
    """The target is the store, lies inside it or holds it (`--force` would empty it)."""
    target, store = _location(target_url), _location(store_url)
    shorter = min(len(target), len(store))
    return target[:shorter] == store[:shorter]


def _location(url: str) -> tuple[str, ...]:
    parts = urlsplit(url)
    path = parts.path
    if parts.scheme == "file":
        path = Path(unquote(path)).resolve().as_posix()
    return (parts.scheme, parts.netloc, *(p for p in path.split("/") if p))


class StoreTarget:
    """A folder or an S3 prefix, written the way the store writes (multipart with SHA-256
    checksums on S3) and checked against the staged files' sizes and checksums afterwards."""

    def __init__(self, url: str, store: ObjectStore) -> None:
        self.url = url
        self._store = store

    def prepare(self, force: bool) -> None:
        try:
            self._store.check()
            existing = self._store.list_names("")
        except StoreConfigError as exc:
            raise PublishRefused(f"--to {self.url}: {exc}") from None
        if existing and not force:
            raise PublishRefused(
                f"--to {self.url} exists and holds {len(existing)} entries "
                "(pass --force to replace them)"
            )

    def upload(self, folder: Path, force: bool, message: str) -> None:
        if force:
            self._store.delete_prefix("")
        manifest = describe_folder(folder)
        for entry in manifest.objects:
            self._store.put_file(entry.name, folder / entry.name, entry)
        wrong = [e.name for e in manifest.objects if not self._store.matches(e.name, e)]
        if wrong:
            raise PublishFailed(f"--to {self.url}: {', '.join(wrong)} do not verify after upload")


class HubTarget:
    """A Hugging Face model repo, written in one commit by `HfApi.upload_folder`."""

    def __init__(self, url: str, repo_id: str, token: str, api: Any) -> None:
        self.url = url
        self.repo_id = repo_id
        self._token = token
        self._api = api

    @classmethod
    def open(cls, url: str, repo_id: str) -> HubTarget:
        """The repo `hf://<repo_id>` names, with an HfApi holding the token from HF_TOKEN."""
        import huggingface_hub
        from huggingface_hub.errors import HFValidationError

        try:
            huggingface_hub.utils.validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise PublishRefused(f"--to {url}: not a hub repo id ({exc})") from None
        token = os.environ.get(HF_TOKEN_ENV, "")
        if not token:
            raise PublishRefused(f"--to {url}: set {HF_TOKEN_ENV} to a hub token that can write")
        register_secret(token)
        return cls(url, repo_id, token, huggingface_hub.HfApi(token=token))

    def prepare(self, force: bool) -> None:
        with self._errors(refuse=True):
            exists = self._api.repo_exists(self.repo_id, repo_type=HUB_REPO_TYPE)
            files = (
                self._api.list_repo_files(self.repo_id, repo_type=HUB_REPO_TYPE) if exists else []
            )
        ours = [f for f in files if f not in HUB_KEPT_FILES]
        if ours and not force:
            raise PublishRefused(
                f"--to {self.url} exists and holds {len(ours)} files (pass --force to replace them)"
            )

    def upload(self, folder: Path, force: bool, message: str) -> None:
        with self._errors(refuse=False):
            self._api.create_repo(self.repo_id, repo_type=HUB_REPO_TYPE, exist_ok=True)
            self._api.upload_folder(
                repo_id=self.repo_id,
                folder_path=folder,
                repo_type=HUB_REPO_TYPE,
                commit_message=message,
                delete_patterns="*" if force else None,
            )

    @contextmanager
    def _errors(self, refuse: bool) -> Iterator[None]:
        """The hub's errors as ours, token-free: a refused token is bad input (exit 2); any
        other error refuses while checking (`refuse`) and fails once copying has begun."""
        from huggingface_hub.errors import HfHubHTTPError, HTTPError

        try:
            yield
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            text = f"{status}: {self._redacted(exc.server_message or str(exc))}"
            if status in (401, 403) or refuse:
                raise PublishRefused(f"--to {self.url}: the hub answered {text}") from None
            raise PublishFailed(f"--to {self.url}: the hub answered {text}") from None
        except (HTTPError, OSError) as exc:
            error = PublishRefused if refuse else PublishFailed
            raise error(f"--to {self.url}: cannot reach the hub ({self._redacted(exc)})") from None

    def _redacted(self, error: BaseException | str) -> str:
        """One line of `error`'s text without the token."""
        return redact(" ".join(str(error).split()).replace(self._token, "[redacted]"))
