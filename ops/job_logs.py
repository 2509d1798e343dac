"""`saefleet logs JOB`: everything logged about one job, in time order, optionally followed.

Two sources:
  - the structured files of every control-plane service (`SAEFLEET_HOME/logs/<service>.log`,
    one JSON object per line): the records whose `job` field is the job;
  - the GPU-side worker log of each of the job's instances: pulled over SSH while the instance
    runs, read from the artifact store (`<job>/logs/worker-a<N>.log`, written by collect) once
    it is gone.
Every line passes through the log redactor on its way out.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ops.errors import OpsError
from ops.views import terminal
from queue_app.connection import get_store
from queue_app.logs import CONTEXT_FIELDS, redact
from queue_app.records import InstanceRecord, JobRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import InstanceState
from queue_app.store import Store

FOLLOW_POLL_S = 2.0
SSH_TIMEOUT_S = 10.0


# ---- control-plane files ------------------------------------------------------------------------


def format_record(entry: dict[str, Any]) -> str:
    """One structured record as a line: time, service, level, logger, message, context."""
    context = " ".join(
        f"{name}={entry[name]}"
        for name in CONTEXT_FIELDS
        if name not in ("job", "sweep") and entry.get(name) is not None
    )
    text = f"{entry['ts']} {entry.get('service', '?')} {entry['level']} {entry['logger']}: "
    text += entry["msg"] + (f" [{context}]" if context else "")
    if entry.get("exc"):
        text += "\n" + entry["exc"]
    return text


@dataclass
class ServiceLogs:
    """Reads the services' JSON-lines files from where it stopped last time."""

    logs_dir: Path
    job_id: str
    offsets: dict[Path, int] = field(default_factory=dict)

    def new_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(self.logs_dir.glob("*.log")):
            records += self._read(path)
        return sorted(records, key=lambda e: e["ts"])

    def _read(self, path: Path) -> Iterator[dict[str, Any]]:
        with open(path, "rb") as f:
            f.seek(self.offsets.get(path, 0))
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offsets[path] = self.offsets.get(path, 0) + len(complete)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # not one of our records
            if isinstance(entry, dict) and entry.get("job") == self.job_id:
                yield entry


# ---- worker logs on instances -------------------------------------------------------------------


class RemoteLogError(OpsError):
    """The worker log could not be read over SSH (the message says why)."""


@dataclass
class WorkerLog:
    """One attempt's GPU-side worker log: over SSH while the instance runs, else the copy in
    the artifact store."""

    attempt: int
    instance: InstanceRecord
    settings: Settings
    job: JobRecord
    offset: int = 0  # bytes already shown (SSH: of the remote file)

    @property
    def label(self) -> str:
        return f"worker a{self.attempt} {self.instance.instance_id}"

    @property
    def live(self) -> bool:
        return self.instance.state is not InstanceState.TERMINATED and bool(self.instance.host)

    def tail(self, lines: int) -> list[str]:
        """The last `lines` lines (and remember where the file ends)."""
        if not self.live:
            from jobs.objectstore import open_store, worker_log_key

            store = open_store(self.settings)
            key = worker_log_key(self.job.sweep_id, self.job.job_id, self.attempt)
            copy = store.get_bytes(key)
            if copy is None:
                return [f"(no copy of this worker log at {store.location(key)})"]
            text = copy.decode(errors="replace")
            self.offset = len(text.encode())
            return text.splitlines()[-lines:]
        path = self._remote_path()
        try:
            out = self._run(f"wc -c < {path} && tail -n {lines} {path}")
        except RemoteLogError as exc:
            return [str(exc)]
        size, _, text = out.partition("\n")
        self.offset = int(size.strip() or 0)
        return text.splitlines()

    def more(self) -> list[str]:
        """Lines appended since the last call (only while the instance runs and answers)."""
        if not self.live:
            return []
        try:
            out = self._run(f"tail -c +{self.offset + 1} {self._remote_path()}")
        except RemoteLogError:
            return []  # said once by tail(); the instance may be gone by now
        complete = out[: out.rfind("\n") + 1]
        self.offset += len(complete.encode())
        return complete.splitlines()

    def _remote_path(self) -> str:
        from jobs.remote import layout_for

        return shlex.quote(layout_for(self.instance).worker_log)

    def _run(self, command: str) -> str:
        from jobs.instances import open_ssh
        from jobs.ssh import SSHError

        try:
            with open_ssh(self.instance, self.settings, timeout=SSH_TIMEOUT_S) as ssh:
                return ssh.run(command, timeout=SSH_TIMEOUT_S, check=True).stdout
        except (SSHError, ValueError) as exc:
            raise RemoteLogError(f"(cannot read the worker log over SSH: {exc})") from None


def worker_logs(store: Store, settings: Settings, job: JobRecord) -> list[WorkerLog]:
    out = []
    for attempt in store.attempts(job.job_id):
        if attempt.instance_id:
            out.append(
                WorkerLog(
                    attempt.attempt,
                    store.instance(attempt.instance_id),
                    settings,
                    job,
                )
            )
    return out


# ---- the command --------------------------------------------------------------------------------


def print_lines(console: Console, label: str, lines: list[str]) -> None:
    for line in lines:
        console.print(f"[dim]{escape(label)}[/] {escape(redact(line))}", highlight=False)


def logs_command(
    job_id: str,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines of each worker log.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    remote: Annotated[
        bool, typer.Option("--remote/--no-remote", help="Include the instances' worker logs.")
    ] = True,
) -> None:
    """A job's logs: control-plane records and its instances' worker logs (over SSH)."""
    settings = get_settings()
    store = get_store(settings)
    job = store.job(job_id)
    console = terminal(soft_wrap=True)
    services = ServiceLogs(settings.logs_dir, job_id)
    print_lines(console, "", [format_record(e) for e in services.new_records()])
    workers = worker_logs(store, settings, job) if remote else []
    for worker in workers:
        console.rule(worker.label, style="dim")
        print_lines(console, worker.label, worker.tail(lines))
    while follow:
        time.sleep(FOLLOW_POLL_S)
        print_lines(console, "", [format_record(e) for e in services.new_records()])
        for worker in workers:
            print_lines(console, worker.label, worker.more())
