"""Structured logging: every record carries sweep/job/attempt/instance, secrets are redacted at
the formatter, and each service writes one file under `SAEFLEET_HOME/logs`."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTEXT_FIELDS = ("sweep", "job", "attempt", "instance")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "saefleet_log_context", default=None
)
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]+@", re.I)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_PRESIGNED = re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+")
"""The secret parts of a presigned URL's query (httpx logs each request's URL)."""
_TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{10,}|secret_[A-Za-z0-9_.-]{10,})\b")
REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Never print `value`: every formatter replaces it with ***."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    """Remove registered secrets, URL passwords, bearer tokens, presigned URLs' signatures
    and credentials, and token-like strings."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _PRESIGNED.sub(rf"\g<1>{REDACTED}", text)
    return _TOKEN_LIKE.sub(REDACTED, text)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach sweep/job/attempt/instance to every record logged inside the block."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def set_log_context(**fields: Any) -> None:
    """Like `log_context`, for code that cannot use a with-block (Celery task prerun)."""
    _context.set({k: v for k, v in fields.items() if v is not None})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, ctx.get(name))
        return True


class RedactingFormatter(logging.Formatter):
    """Human-readable one-line records with context, secrets removed."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        base = super().format(record)
        return redact(f"{base} {ctx}".rstrip() if ctx else base)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for files), secrets removed: ts, level, service, logger, msg,
    sweep, job, attempt, instance, and exc when there is a traceback."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:  # always present (null when unknown), so files filter alike
            entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def setup_logging(
    service: str, logs_dir: Path | None, level: str = "INFO", console: bool = True
) -> None:
    """Console (human, unless `console` is false) + `logs_dir/<service>.log` (JSON lines)
    handlers on the root logger."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_saefleet", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = []
    if console:
        stream = logging.StreamHandler()
        stream.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(stream)
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(logs_dir / f"{service}.log")
        file_handler.setFormatter(JsonFormatter(service))
        handlers.append(file_handler)
    for handler in handlers:
        handler.addFilter(ContextFilter())
        handler._saefleet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
