"""An instance's checkpoint upload in a thread (the real jobs.checkpoint_upload code, polling
the board quickly) beside a control plane the test drives by hand."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobs.checkpoint_upload import CheckpointUpload, upload_checkpoint
from jobs.upload_board import UploadBoard
from queue_app.store import Store

POLL_S = 0.01
WAIT_S = 30.0


@dataclass
class InstanceUpload:
    """One checkpoint upload running as the instance runs it."""

    item: CheckpointUpload
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> InstanceUpload:
        def run() -> None:
            try:
                upload_checkpoint(self.item, poll_s=POLL_S, timeout_s=WAIT_S)
            except BaseException as exc:  # the test reads it
                self.error.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def start_upload(store: Store, job_id: str, segment: int, folder: Path) -> InstanceUpload:
    board = UploadBoard(store.r, job_id, 1)
    return InstanceUpload(CheckpointUpload(board, segment, folder.name, folder)).start()


def serve_until(
    serve: Callable[[], None], done: Callable[[], bool], upload: InstanceUpload
) -> None:
    """Serve the board (as supervise does every poll) until `done`, or the upload ended."""
    while not done():
        serve()
        if not upload.running:
            serve()
            break
    assert upload.thread is not None
    upload.thread.join(WAIT_S)
