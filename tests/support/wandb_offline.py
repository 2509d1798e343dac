"""Reading W&B offline runs back (`WANDB_MODE=offline`): the `.wandb` transaction log that
`wandb sync` would upload, parsed with wandb's own protobuf records. The file is W&B's
LevelDB-style log: a 7-byte header, then 32 KiB blocks of records, each with a 7-byte header
(CRC, length, type: full, first, middle, last) and padding at a block's end."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from tests.support.waiting import wait_for

BLOCK = 32768
HEADER = 7
FULL, LAST = 1, 4


@dataclass
class OfflineRun:
    """What one offline run directory holds."""

    run_id: str = ""
    group: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under `root` (a `wandb` folder's parent), oldest first."""
    return [read_run(path) for path in sorted(root.glob("wandb/offline-run-*/run-*.wandb"))]


def written_runs(
    root: Path, ready: Callable[[list[OfflineRun]], bool], timeout_s: float = 30
) -> list[OfflineRun]:
    """`offline_runs(root)` once `ready` holds for them and each has its run record and
    summary: wandb's service writes a run's records after `finish` returns, on its own time."""

    def written() -> list[OfflineRun] | None:
        runs = offline_runs(root)
        complete = all(run.run_id and run.summary for run in runs)
        return runs if complete and ready(runs) else None

    return wait_for("the offline W&B runs written", written, timeout_s=timeout_s)


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for data in _records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.project = r.run_id, r.run_group, r.project
            run.entity, run.name = r.entity, r.display_name
            run.config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return run


def _key(item: Any) -> str:
    """An item's key ("train/loss" comes as the nested key ["train", "loss"])."""
    return str(item.key or "/".join(item.nested_key))


def _records(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # padding to the block's end
            pos += left
            continue
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            yield pending
            pending = b""
