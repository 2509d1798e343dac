"""`saefleet bench store`: what a checkpoint costs the GPU with the store and with the SFTP pull
it replaced, and how fast a checkpoint reaches the store, on a synthetic checkpoint
(`--size-mb`, default 1024: random bytes as `state.pt`, written by sae.checkpoint).

- GPU wait, store: what `train_segment` spends handing the checkpoint to the background
  uploader (jobs.checkpoint_upload: a hard-link snapshot and a queue put) before the next
  segment can start. Target: under 1 s.
- GPU wait, SFTP pull: what the control plane spends pulling the checkpoint off a local instance
  (its own sshd on loopback), verifying and publishing it in the file store, before it sends the
  next segment (jobs.checkpoint_pull; still the path of a cloud instance with the file store).
- Upload: from the hand-over until the checkpoint counts (the instance hashing and uploading
  it, the control plane serving the upload board every POLL_S as supervise does, completing the
  upload and verifying the manifest), to the file store and to S3 (moto's server on loopback,
  when `moto_server` is installed), in MB/s of checkpoint.

It runs its own Redis on a free port in a temporary SAEFLEET_HOME and stops all it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from jobs.checkpoint_upload import upload_in_background
from jobs.checkpoints import pulled_checkpoint_dir, store_pulled_checkpoint
from jobs.providers.base import LaunchRequest
from jobs.providers.local import INSTANCE_TYPE, REGION, LocalProvider
from jobs.ssh import SSHTarget
from jobs.ssh_connect import connect, ensure_keypair
from jobs.tiny_sweep import tiny_job
from jobs.upload_board import UploadBoard
from jobs.upload_grants import serve_uploads
from ops.views import terminal
from queue_app.connection import connect as connect_redis
from queue_app.processes import free_port, port_open, stop_process
from queue_app.records import JobRecord, SweepRecord
from queue_app.redis_server import start_redis
from queue_app.settings import Settings
from queue_app.statemachine import JobState
from queue_app.store import Store
from sae.checkpoint import write_checkpoint

POLL_S = 0.3
"""How often the control plane serves the upload board (supervise's poll in the e2e tests)."""
TARGET_GPU_WAIT_S = 1.0
SWEEP, JOB = "bench", "bench-0000"
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench-key-id",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def run_benchmark(size_mb: int) -> dict[str, Any]:
    """Measure each case once (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="saefleet-store-bench-") as tmp:
        root = Path(tmp)
        with _redis(root) as store:
            _job_records(store)
            state = os.urandom(1 << 20) * size_mb
            checkpoint = write_checkpoint(root / "run" / "checkpoints", 100, 0, state, "{}")
            del state
            rows = [_pull_row(root, checkpoint)]
            file_url = (root / "file-store").as_uri()
            rows.append(_upload_row(root, store, checkpoint, "file", file_url, None, 1))
            with _moto(root) as endpoint:
                if endpoint is not None:
                    bucket = _bucket(endpoint)
                    s3_url = f"s3://{bucket}/fleet"
                    rows.append(_upload_row(root, store, checkpoint, "s3", s3_url, endpoint, 2))
    return {
        "size_mb": size_mb,
        "poll_s": POLL_S,
        "target_gpu_wait_s": TARGET_GPU_WAIT_S,
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }


def _upload_row(
    root: Path,
    store: Store,
    checkpoint: Path,
    kind: str,
    store_url: str,
    endpoint: str | None,
    segment: int,
) -> dict[str, Any]:
    """Hand the checkpoint to the uploader as train_segment does; serve the board until kept."""
    settings = Settings(home=root / "home", store_url=store_url, store_endpoint_url=endpoint)
    job = store.job(JOB)
    board = UploadBoard(store.r, JOB, 1)
    started = time.perf_counter()
    upload_in_background(board, segment, checkpoint, root / "outbox")
    gpu_wait = time.perf_counter() - started
    while board.outcome(segment) is None:
        serve_uploads(store, settings, job, 1)
        time.sleep(POLL_S)
    kept = time.perf_counter() - started
    size_mb = _size(checkpoint) / 1e6
    return {
        "case": f"store ({kind})",
        "gpu_wait_s": round(gpu_wait, 4),
        "kept_after_s": round(kept, 2),
        "mb_per_s": round(size_mb / kept, 1),
        "outcome": str(board.outcome(segment)),
    }


def _pull_row(root: Path, checkpoint: Path) -> dict[str, Any]:
    """The old path: pull the checkpoint off a local instance over SFTP, verify, publish."""
    settings = Settings(home=root / "home", store_url=(root / "pull-store").as_uri())
    provider = LocalProvider(root / "instances")
    key_path, public_key = ensure_keypair(settings.keys_dir)
    request = LaunchRequest(
        name="sf-bench-1", instance_type=INSTANCE_TYPE, region=REGION, ssh_public_key=public_key
    )
    instance = provider.launch(request)
    try:
        remote = Path(instance.workdir) / "run" / "checkpoints" / checkpoint.name
        shutil.copytree(checkpoint, remote, copy_function=os.link)
        target = SSHTarget(
            host=instance.host or "127.0.0.1",
            port=instance.ssh_port,
            user=instance.ssh_user,
            key_path=key_path,
            host_key_id=instance.id,
            known_hosts_dir=settings.known_hosts_dir,
        )
        local = pulled_checkpoint_dir(settings, SWEEP, JOB, checkpoint.name)
        started = time.perf_counter()
        with connect(target, timeout=30) as ssh:
            ssh.get_dir(str(remote), local)
        assert store_pulled_checkpoint(settings, SWEEP, JOB, checkpoint.name)
        took = time.perf_counter() - started
    finally:
        provider.terminate(instance.id)
    return {
        "case": "SFTP pull (file)",
        "gpu_wait_s": round(took, 4),
        "kept_after_s": round(took, 2),
        "mb_per_s": round(_size(checkpoint) / 1e6 / took, 1),
        "outcome": "kept",
    }


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _job_records(store: Store) -> None:
    """One job in TRAINING on attempt 1 (what serving the upload board reads and writes)."""
    now = time.time()
    config = tiny_job("tiny-lm", "corpus.jsonl")
    spec = {"config": config, "provider": {"name": "local"}, "overrides": {}}
    sweep = SweepRecord(sweep_id=SWEEP, name="bench", created_at=now, spec={}, job_ids=[JOB])
    job = JobRecord(
        job_id=JOB,
        sweep_id=SWEEP,
        index=0,
        name=JOB,
        state=JobState.QUEUED,
        attempt=1,
        spec=spec,
        created_at=now,
        updated_at=now,
    )
    store.create_sweep(sweep, [job])
    store.start_first_attempt(JOB)


@contextmanager
def _redis(root: Path) -> Iterator[Store]:
    port, password = free_port(), secrets.token_hex(8)
    pid = start_redis(root / "redis", port, password, root / "redis.log")
    try:
        yield connect_redis(f"redis://:{password}@127.0.0.1:{port}/0")
    finally:
        stop_process(pid)


@contextmanager
def _moto(root: Path) -> Iterator[str | None]:
    """moto's S3 server on a free loopback port, or None when it is not installed."""
    beside = Path(sys.executable).with_name("moto_server")
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        yield None
        return
    os.environ.update(MOTO_CREDENTIALS)
    port = free_port()
    with (root / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _bucket(endpoint: str) -> str:
    import boto3

    bucket = f"bench-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


def render(result: dict[str, Any]) -> Table:
    title = f"checkpoint of {result['size_mb']} MB: GPU wait and upload"
    table = Table(title=title)
    for column in ("case", "GPU waits (s)", "kept in the store after (s)", "MB/s"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            row["case"],
            f"{row['gpu_wait_s']:.3f}",
            f"{row['kept_after_s']:.1f}",
            str(row["mb_per_s"]),
        )
    return table


def verdict(result: dict[str, Any]) -> str:
    worst = max(r["gpu_wait_s"] for r in result["rows"] if r["case"].startswith("store"))
    met = "met" if worst < result["target_gpu_wait_s"] else "NOT met"
    return f"GPU wait with the store: at most {worst:.3f} s (target < 1 s: {met})"


def bench_store_command(
    size_mb: Annotated[int, typer.Option(min=1, help="Synthetic checkpoint size in MB.")] = 1024,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    output: Annotated[Path, typer.Option(help="Where the JSON report goes.")] = Path(
        "bench-store.json"
    ),
) -> None:
    """Seconds the GPU waits per checkpoint (store vs SFTP pull) and upload throughput."""
    result = run_benchmark(size_mb)
    output.write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console = terminal()
    console.print(render(result))
    console.print(verdict(result))
