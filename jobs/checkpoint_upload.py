"""The instance's side of checkpoint uploads: `train_segment` hands each checkpoint it wrote to
one background thread per worker process and returns, so the next segment trains while the
checkpoint goes to the store (the GPU does not wait for an upload).

The thread uploads one checkpoint at a time, oldest first: it hashes the checkpoint (a hard-link
snapshot, so the trainer may prune its own copy meanwhile), asks for upload plans on the
attempt's board (jobs.upload_board), PUTs every part to its URL (jobs.presigned_upload; fresh
URLs are asked for when they expire) and reports the parts. The control plane completes the
uploads, writes the manifest last and verifies it (jobs.upload_grants). The instance holds no
store credentials, only URLs for the keys of this checkpoint that expire within hours.

An upload cut short (the instance preempted, a part refused) reports nothing or a failure, and
the checkpoint never counts.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import redis

from jobs.objectstore import StoreError, describe_folder
from jobs.presigned_upload import PART_TIMEOUT_S, upload_file
from jobs.upload_board import UploadBoard, UploadGrant, UploadReport, UploadRequest
from jobs.upload_plans import UploadPlan
from queue_app.logs import redact

log = logging.getLogger(__name__)

UPLOAD_ENV = "SAEFLEET_CHECKPOINT_UPLOAD"
"""Set to 1 in the GPU-side worker's environment when the instance uploads its checkpoints."""
BOARD_POLL_S = 0.2
"""How often the uploader looks for the control plane's answer."""
BOARD_TIMEOUT_S = 30 * 60.0
"""How long it waits for an answer (the control plane serves the board every poll interval)."""

T = TypeVar("T")


@dataclass(frozen=True)
class CheckpointUpload:
    """One checkpoint to upload: the snapshot folder of `name`, written by `segment`."""

    board: UploadBoard
    segment: int
    name: str
    folder: Path


def uploads_from_here() -> bool:
    """Bootstrap told this worker to upload its checkpoints itself."""
    return os.environ.get(UPLOAD_ENV) == "1"


_pending: queue.Queue[CheckpointUpload] = queue.Queue()
_threads: list[threading.Thread] = []  # the one uploader thread of this process, once started
_threads_lock = threading.Lock()


def upload_in_background(
    board: UploadBoard, segment: int, checkpoint: Path, outbox: Path
) -> CheckpointUpload:
    """Queue `checkpoint` for upload and return at once (a hard-link snapshot, no copy)."""
    snapshot = outbox / f"segment-{segment}-{checkpoint.name}"
    shutil.rmtree(snapshot, ignore_errors=True)
    outbox.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, snapshot, copy_function=os.link)
    item = CheckpointUpload(board, segment, checkpoint.name, snapshot)
    _pending.put(item)
    with _threads_lock:
        if not any(thread.is_alive() for thread in _threads):
            thread = threading.Thread(target=_upload_forever, name="checkpoint-upload", daemon=True)
            thread.start()
            _threads[:] = [thread]
    return item


def wait_for_uploads() -> None:
    """Block until every queued upload has ended (benchmarks and tests)."""
    _pending.join()


def _upload_forever() -> None:
    while True:
        item = _pending.get()
        try:
            upload_checkpoint(item)
        except Exception as exc:
            log.exception("uploading checkpoint %s of segment %d", item.name, item.segment)
            _report_failure(item, redact(f"{type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(item.folder, ignore_errors=True)
            _pending.task_done()


def _report_failure(item: CheckpointUpload, error: str) -> None:
    try:
        _patiently(lambda: item.board.fail(item.segment, error))
    except redis.exceptions.ConnectionError:
        log.error("cannot report the failed upload of %s: Redis is unreachable", item.name)


def upload_checkpoint(
    item: CheckpointUpload, poll_s: float = BOARD_POLL_S, timeout_s: float = BOARD_TIMEOUT_S
) -> None:
    """Ask for plans, upload every file of the checkpoint, report the parts."""
    board, segment = item.board, item.segment
    manifest = describe_folder(item.folder)
    _patiently(lambda: board.request(segment, UploadRequest(name=item.name, manifest=manifest)))

    def answered() -> UploadGrant | bool | None:
        return board.outcome(segment) is not None or board.grant(segment)

    first = _await(answered, poll_s, timeout_s, f"upload plans for {item.name}")
    if not isinstance(first, UploadGrant):
        log.info("checkpoint %s is in the store already", item.name)
        return
    grant = first
    reissues = 0

    def reissue(plan: UploadPlan) -> UploadPlan:
        nonlocal grant, reissues
        reissues += 1
        asked = reissues
        _patiently(lambda: board.ask_reissue(segment, asked))

        def fresh() -> UploadGrant | None:
            again = board.grant(segment)
            return again if again is not None and again.answers_reissue >= asked else None

        grant = _await(fresh, poll_s, timeout_s, f"fresh upload URLs for {item.name}")
        return next(p for p in grant.plans if p.key == plan.key)

    parts = []
    started = time.monotonic()
    with httpx.Client(timeout=PART_TIMEOUT_S) as http:
        for index, entry in enumerate(manifest.objects):
            parts.append(
                upload_file(item.folder / entry.name, grant.plans[index], reissue, client=http)
            )
    _patiently(lambda: board.report(segment, UploadReport(parts=parts)))
    size = sum(entry.size for entry in manifest.objects)
    log.info(
        "uploaded checkpoint %s (%.1f MB in %.1fs)",
        item.name,
        size / 1e6,
        time.monotonic() - started,
    )


def _await(answer: Callable[[], T | None], poll_s: float, timeout_s: float, what: str) -> T:
    """Poll the board until `answer` gives something (riding out Redis reconnects)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = answer()
        except redis.exceptions.ConnectionError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise StoreError(f"no answer from the control plane: {what} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def _patiently(write: Callable[[], None], timeout_s: float = BOARD_TIMEOUT_S) -> None:
    """Write to the board, retrying while Redis is unreachable (the tunnel being re-made)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            write()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
