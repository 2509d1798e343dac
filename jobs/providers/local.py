"""The local provider: each instance is a real OpenSSH `sshd` on a loopback port, so the same
SSH, SFTP, worker and liveness code runs as on a cloud, with no account.

The provider's truth lives on disk, never in Redis, so every process sees the same fleet:

    <root>/<instance_id>/instance.json    the record (written atomically)
                         sshd_config, ssh_host_ed25519_key, authorized_keys, sshd.pid, sshd.log
                         home/            the instance's home and workdir (HOME in sessions)

terminate/preempt stop the instance's sshd and everything that ran in its sessions
(jobs.providers.local_sshd starts the one and finds the others). Sessions start in the user's
own home directory (sshd's choice), so commands should use absolute paths or `cd "$HOME"`.

A file `<root>/no-capacity` (`refuse_capacity`) makes launches fail with CapacityError, as a
cloud out of the type would.

Statuses: booting (until boot_delay_s has passed), active, unhealthy (its sshd died without
terminate/preempt, or it was recorded as ended while its sshd still runs: it is reported gone only
once its processes are), terminated, preempted. Spot instances die on their own schedule when
`preempt_rate` > 0: a preemption time drawn at launch takes effect when get()/list() see it.

Interruption notices: `home/.saefleet-notice.json` (see jobs.providers.notice), written
`notice_s` before a random preemption (when get()/list() see that moment), or at once by
`preempt(id, notice_s=...)`, which kills the instance that many seconds later (again when
get()/list() see it, or a later `preempt(id)`).
"""

from __future__ import annotations

import builtins
import fcntl
import logging
import os
import pwd
import random
import re
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from jobs.providers.base import (
    INSTANCE_NAME_PREFIX,
    Capacity,
    Instance,
    InstanceStatus,
    InstanceType,
    LaunchRequest,
)
from jobs.providers.errors import (
    CapacityError,
    InvalidRequest,
    NotFound,
    PermanentProviderError,
    ProviderError,
)
from jobs.providers.local_sshd import HOST, sshd_runs, start_sshd, stop_instance_processes
from jobs.providers.notice import Notice, NoticeChannel, NoticeKind, notices_json
from jobs.ssh import SSHError
from jobs.ssh_connect import ensure_keypair
from queue_app.processes import ProcessError
from sae.atomic_files import write_atomic

log = logging.getLogger(__name__)

INSTANCE_TYPE = "local-cpu"
REGION = "local"
SPOT_PRICE_FRACTION = 0.35
"""Spot price as a fraction of the on-demand price (typical cloud spot discounts: 60-70 %)."""
TERMINATE_GRACE_S = 5.0
"""terminate() sends SIGTERM, then SIGKILL to what is left after this long."""
NO_CAPACITY = "no-capacity"
NOTICE_FILE = ".saefleet-notice.json"
_INSTANCE_ID = re.compile(r"local-[0-9a-f]{8}")


class _InstanceRecord(BaseModel):
    """What `instance.json` holds."""

    id: str
    name: str
    capacity: Capacity
    price_per_hour: float
    user: str
    port: int
    sshd_pid: int
    launched_at: float
    ready_at: float
    preempt_at: float | None = None
    notice_at: float | None = None
    """When the instance is told of its preemption (None: never)."""
    ended: Literal["terminated", "preempted"] | None = None
    ended_at: float | None = None


def preemption_delay_s(name: str, rate_per_hour: float) -> float | None:
    """Seconds after launch at which a spot instance named `name` is preempted: exponential
    with `rate_per_hour` expected preemptions per instance-hour, seeded from the name so runs
    are reproducible; None when the rate is 0."""
    if rate_per_hour <= 0:
        return None
    return random.Random(name).expovariate(rate_per_hour) * 3600.0


class LocalProvider:
    """Instances as sshd processes on this machine (see the module docstring)."""

    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        price_per_hour: float = 0.0,
        boot_delay_s: float = 0.0,
        preempt_rate: float = 0.0,
        notice_s: float = 0.0,
    ) -> None:
        self._root = root
        self._price_per_hour = price_per_hour
        self._boot_delay_s = boot_delay_s
        self._preempt_rate = preempt_rate
        self._notice_s = notice_s

    def instance_types(self) -> builtins.list[InstanceType]:
        """One CPU type; it always has capacity, on demand and spot."""
        return [
            InstanceType(
                name=INSTANCE_TYPE,
                description="An sshd on loopback with its own home directory (no GPU).",
                gpu_description="none",
                price_per_hour=self._price_per_hour,
                spot_price_per_hour=self._price_per_hour * SPOT_PRICE_FRACTION,
                regions=[REGION],
            )
        ]

    def launch(self, request: LaunchRequest) -> Instance:
        """Start an instance named `request.name`, or return the live one with that name."""
        _validate(request)
        with _disk_errors("launch"):
            self._root.mkdir(parents=True, exist_ok=True)
            with _locked(self._root / ".launch.lock"):
                if (self._root / NO_CAPACITY).exists():
                    raise CapacityError(f"local provider: no capacity ({self._root / NO_CAPACITY})")
                for record in self._records():
                    if record.name == request.name:
                        instance = self._observe(record)
                        if not instance.status.gone:
                            return instance
                record = self._start(request)
        log.info("launched local instance %s (%s) on port %d", record.id, record.name, record.port)
        return self._observe(record)

    def get(self, instance_id: str) -> Instance:
        with _disk_errors(f"get {instance_id}"):
            return self._observe(self._load(instance_id))

    def list(self, include_foreign: bool = False) -> builtins.list[Instance]:
        """Instances that are not gone, ours only (names with our prefix) unless told."""
        with _disk_errors("list"):
            instances = [self._observe(record) for record in self._records()]
        return [
            instance
            for instance in instances
            if not instance.status.gone
            and (include_foreign or instance.name.startswith(INSTANCE_NAME_PREFIX))
        ]

    def terminate(self, instance_id: str) -> None:
        """Stop sshd and every process of the instance (SIGTERM, then SIGKILL); its directory
        stays. An instance that is gone already (terminated, preempted, unknown) is success."""
        try:
            self._end(instance_id, "terminated", grace_s=TERMINATE_GRACE_S)
        except NotFound:
            log.info("local instance %s is already gone (unknown)", instance_id)

    def refuse_capacity(self, refused: bool = True) -> None:
        """Make launches fail with CapacityError (all processes), or succeed again."""
        marker = self._root / NO_CAPACITY
        if refused:
            self._root.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def preempt(self, instance_id: str, notice_s: float = 0.0) -> None:
        """Kill the instance abruptly (SIGKILL to sshd and all its processes), as a cloud
        reclaiming a spot instance would; with `notice_s`, tell it now and kill it that many
        seconds later (see the module docstring)."""
        if notice_s <= 0:
            self._end(instance_id, "preempted", grace_s=0.0)
            return
        with _disk_errors(f"notice to {instance_id}"):
            self._load(instance_id)
            with _locked(self._dir(instance_id) / ".lock"):
                record = self._load(instance_id)
                if record.ended is not None:
                    return
                now = time.time()
                record = record.model_copy(update={"preempt_at": now + notice_s, "notice_at": now})
                self._save(record)
                self._tell(record)

    def notice_channel(self, workdir: str) -> NoticeChannel:
        """A notice file in the instance's home."""
        return NoticeChannel(kind="file", location=str(Path(workdir) / NOTICE_FILE))

    # ---- records --------------------------------------------------------------------------

    def _dir(self, instance_id: str) -> Path:
        return self._root / instance_id

    def _load(self, instance_id: str) -> _InstanceRecord:
        path = self._dir(instance_id) / "instance.json"
        if not _INSTANCE_ID.fullmatch(instance_id) or not path.is_file():
            raise NotFound(f"local instance {instance_id!r} does not exist under {self._root}")
        try:
            return _InstanceRecord.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise PermanentProviderError(f"corrupt instance record {path}: {exc}") from exc

    def _records(self) -> Iterator[_InstanceRecord]:
        if not self._root.is_dir():
            return
        for entry in sorted(self._root.iterdir()):
            if _INSTANCE_ID.fullmatch(entry.name) and (entry / "instance.json").is_file():
                yield self._load(entry.name)

    def _save(self, record: _InstanceRecord) -> None:
        write_atomic(self._dir(record.id) / "instance.json", record.model_dump_json(indent=2))

    # ---- lifecycle ------------------------------------------------------------------------

    def _start(self, request: LaunchRequest) -> _InstanceRecord:
        """Create the instance directory, start its sshd, write its record."""
        instance_id = f"local-{secrets.token_hex(4)}"
        directory = self._dir(instance_id)
        (directory / "home").mkdir(parents=True)
        ensure_keypair(directory, "ssh_host_ed25519_key")
        authorized_keys = directory / "authorized_keys"
        authorized_keys.write_text(request.ssh_public_key.strip() + "\n")
        authorized_keys.chmod(0o600)
        user = pwd.getpwuid(os.geteuid()).pw_name
        sshd_pid, port = start_sshd(directory, instance_id, user)
        launched_at = time.time()
        delay = preemption_delay_s(request.name, self._preempt_rate)
        preempt_at = (
            launched_at + delay if delay is not None and request.capacity == "spot" else None
        )
        record = _InstanceRecord(
            id=instance_id,
            name=request.name,
            capacity=request.capacity,
            price_per_hour=self._price_per_hour
            * (SPOT_PRICE_FRACTION if request.capacity == "spot" else 1.0),
            user=user,
            port=port,
            sshd_pid=sshd_pid,
            launched_at=launched_at,
            ready_at=launched_at + self._boot_delay_s,
            preempt_at=preempt_at,
            notice_at=None
            if preempt_at is None or self._notice_s <= 0
            else max(launched_at, preempt_at - self._notice_s),
        )
        self._save(record)
        return record

    def _observe(self, record: _InstanceRecord) -> Instance:
        """The instance as a cloud would report it now (applying a preemption that is due)."""
        now = time.time()
        due = record.ended is None and record.notice_at is not None and now >= record.notice_at
        if due and not (self._dir(record.id) / "home" / NOTICE_FILE).exists():
            self._tell(record)
        if record.ended is None and record.preempt_at is not None and now >= record.preempt_at:
            log.info("local instance %s reached its preemption time", record.id)
            self.preempt(record.id)
            record = self._load(record.id)
        sshd_pid = self._sshd_pid(record)
        if record.ended is not None:
            status = InstanceStatus(record.ended) if sshd_pid is None else InstanceStatus.UNHEALTHY
        elif sshd_pid is None:
            status = InstanceStatus.UNHEALTHY
        elif now < record.ready_at:
            status = InstanceStatus.BOOTING
        else:
            status = InstanceStatus.ACTIVE
        reachable = status in (InstanceStatus.ACTIVE, InstanceStatus.UNHEALTHY)
        return Instance(
            id=record.id,
            name=record.name,
            status=status,
            instance_type=INSTANCE_TYPE,
            region=REGION,
            capacity=record.capacity,
            price_per_hour=record.price_per_hour,
            host=HOST if reachable else None,
            ssh_port=record.port,
            ssh_user=record.user,
            workdir=str((self._dir(record.id) / "home").absolute()),
        )

    def _tell(self, record: _InstanceRecord) -> None:
        """Write the instance's notice of its preemption (the same file on every call)."""
        if record.preempt_at is None:
            return
        notice = Notice(kind=NoticeKind.INTERRUPTION, at=record.preempt_at, action="terminate")
        write_atomic(self._dir(record.id) / "home" / NOTICE_FILE, notices_json([notice]))

    def _sshd_pid(self, record: _InstanceRecord) -> int | None:
        """The pid of the instance's sshd if it still runs (and is that sshd, not a reuse)."""
        pid = record.sshd_pid
        return pid if sshd_runs(pid, self._dir(record.id) / "sshd_config") else None

    def _end(
        self, instance_id: str, how: Literal["terminated", "preempted"], grace_s: float
    ) -> None:
        with _disk_errors(f"stopping {instance_id}"):
            self._load(instance_id)  # NotFound before touching its directory
            with _locked(self._dir(instance_id) / ".lock"):
                record = self._load(instance_id)
                listener = self._sshd_pid(record)
                if record.ended is not None and listener is None:
                    return
                # Frozen first, sshd accepts no connection while its sessions are stopped: a
                # session forked during the kill would outlive its killed parent unrecognised.
                if listener is not None:
                    with suppress(ProcessLookupError):
                        os.kill(listener, signal.SIGSTOP)
                stop_instance_processes(
                    instance_id, self._dir(instance_id) / "sshd_config", grace_s
                )
                if record.ended is None:
                    self._save(record.model_copy(update={"ended": how, "ended_at": time.time()}))
        log.info("local instance %s %s", instance_id, how)


def _validate(request: LaunchRequest) -> None:
    if request.instance_type != INSTANCE_TYPE:
        raise InvalidRequest(
            f"instance_type {request.instance_type!r}: the local provider offers only "
            f"{INSTANCE_TYPE!r}"
        )
    if request.region != REGION:
        raise InvalidRequest(f"region {request.region!r}: the local provider has only {REGION!r}")
    key = request.ssh_public_key.strip()
    if "\n" in key or "\r" in key or len(key.split()) < 2:
        raise InvalidRequest("ssh_public_key must be one OpenSSH public key line")


@contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """Map failures of files, processes and key generation onto provider errors."""
    try:
        yield
    except ProviderError:
        raise
    except (ProcessError, SSHError) as exc:
        raise PermanentProviderError(f"local provider: {what}: {exc}") from exc
    except OSError as exc:
        raise ProviderError(f"local provider: {what}: {exc}") from exc


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock held for the block (across processes and threads)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
