"""The layout saefleet keeps in an instance's work directory, and the Python it runs there."""

from __future__ import annotations

import posixpath
import sys
from dataclasses import dataclass

from queue_app.records import InstanceRecord
from queue_app.settings import Settings


@dataclass(frozen=True)
class RemoteLayout:
    """Paths under the instance's workdir (POSIX strings: they live on the instance)."""

    workdir: str

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.workdir, *parts)

    @property
    def bundle_dir(self) -> str:
        return self._join("bundle")

    @property
    def job_config(self) -> str:
        """The job's JobConfig as JSON (what train_segment reads)."""
        return self._join("job.json")

    @property
    def broker_url_file(self) -> str:
        """The worker's broker URL (0600: it holds the Redis password)."""
        return self._join("worker.url")

    @property
    def secrets_env(self) -> str:
        """Environment of the worker process only (0600): e.g. the Hugging Face token."""
        return self._join("secrets.env")

    @property
    def restore_plan(self) -> str:
        """The checkpoint a resumed attempt downloads from the store (0600: it holds URLs)."""
        return self._join("restore.json")

    def member_restore_plan(self, member: str) -> str:
        """The checkpoint a pack member of a resumed attempt downloads (0600: it holds URLs)."""
        return self._join(f"restore-{member}.json")

    def member_checkpoints_dir(self, member: str) -> str:
        """A pack member's checkpoints (its run directory is `run/<member>/`)."""
        return self._join("run", member, "checkpoints")

    @property
    def upload_outbox(self) -> str:
        """Snapshots of checkpoints being uploaded to the store."""
        return self._join("outbox")

    @property
    def start_script(self) -> str:
        return self._join("start-worker.sh")

    @property
    def worker_pid(self) -> str:
        return self._join("worker.pid")

    @property
    def worker_log(self) -> str:
        return self._join("logs", "worker.log")

    @property
    def venv(self) -> str:
        return self._join("venv")

    @property
    def run_dir(self) -> str:
        """The training run directory (checkpoints/, final/, heartbeat.json)."""
        return self._join("run")

    @property
    def checkpoints_dir(self) -> str:
        return self._join("run", "checkpoints")

    @property
    def final_dir(self) -> str:
        return self._join("run", "final")

    @property
    def heartbeat(self) -> str:
        return self._join("run", "heartbeat.json")


def layout_for(instance: InstanceRecord) -> RemoteLayout:
    if not instance.workdir:
        raise ValueError(f"instance {instance.instance_id} has no workdir")
    return RemoteLayout(instance.workdir)


def reuses_local_venv(instance: InstanceRecord, settings: Settings) -> bool:
    """Local instances may run this very venv's Python (the code bundle is still uploaded)."""
    return instance.provider == "local" and settings.local_reuse_venv


def system_python(instance: InstanceRecord, settings: Settings) -> str:
    """The Python used before bootstrap (verify_gpu's checks)."""
    return sys.executable if reuses_local_venv(instance, settings) else "python3"


def worker_python(instance: InstanceRecord, settings: Settings) -> str:
    """The Python that runs the GPU-side worker."""
    if reuses_local_venv(instance, settings):
        return sys.executable
    return posixpath.join(layout_for(instance).venv, "bin", "python")


def worker_hostname(job_id: str, attempt: int, instance_id: str) -> str:
    """The Celery node name of a GPU-side worker: names the job, attempt and instance."""
    return f"gpu-{job_id}-a{attempt}@{instance_id}"
