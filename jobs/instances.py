"""Getting at a job's instance: its provider, an SSH session to it, and termination that is
idempotent and confirmed at the provider."""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.providers import InstanceStatus, NotFound, Provider, get_provider
from jobs.ssh import SSHSession, SSHTarget
from jobs.ssh_connect import connect, ensure_keypair, ensure_private_key
from queue_app.jobspec import ProviderSpec
from queue_app.records import InstanceRecord
from queue_app.settings import Settings
from queue_app.statemachine import InstanceState
from queue_app.store import Store

log = logging.getLogger(__name__)


_providers: dict[tuple[str, str], Provider] = {}


def provider_for(spec: ProviderSpec, settings: Settings) -> Provider:
    """One provider object per spec and home per process (keeps HTTP clients shared)."""
    key = (spec.model_dump_json(), str(settings.home))
    if key not in _providers:
        _providers[key] = get_provider(spec, settings)
    return _providers[key]


def fleet_keypair(settings: Settings) -> tuple[Path, str]:
    """The fleet's SSH key pair (private key path, public key line), made once per home."""
    return ensure_keypair(settings.keys_dir)


def ssh_target(instance: InstanceRecord, settings: Settings) -> SSHTarget:
    if instance.host is None or instance.ssh_port is None or instance.ssh_user is None:
        raise ValueError(f"instance {instance.instance_id} has no SSH address yet")
    return SSHTarget(
        host=instance.host,
        port=instance.ssh_port,
        user=instance.ssh_user,
        key_path=ensure_private_key(settings.keys_dir),
        host_key_id=instance.instance_id,
        known_hosts_dir=settings.known_hosts_dir,
    )


def open_ssh(instance: InstanceRecord, settings: Settings, timeout: float = 15.0) -> SSHSession:
    return connect(ssh_target(instance, settings), timeout=timeout)


def request_termination(store: Store, provider: Provider, instance: InstanceRecord) -> None:
    """Ask the provider to terminate (already gone counts as done); does not wait."""
    if instance.state is InstanceState.TERMINATED:
        return
    store.mark_instance_terminating(instance.instance_id)
    provider.terminate(instance.instance_id)
    log.info("asked %s to terminate %s", provider.name, instance.instance_id)


def confirm_terminated(store: Store, provider: Provider, instance: InstanceRecord) -> bool:
    """True (and the cost clock stopped) once the provider reports the instance gone."""
    if instance.state is InstanceState.TERMINATED:
        return True
    try:
        status = provider.get(instance.instance_id).status
    except NotFound:
        status = InstanceStatus.TERMINATED
    if status.gone:
        store.mark_instance_terminated(instance.instance_id)
        return True
    return False


def provider_lost_instance(provider: Provider, instance: InstanceRecord) -> str | None:
    """Why the provider no longer runs `instance` (preempted, gone, unhealthy), or None."""
    if instance.terminate_requested_at is not None:
        return None  # we asked for it to go
    try:
        status = provider.get(instance.instance_id).status
    except NotFound:
        return f"instance {instance.instance_id} no longer exists at {provider.name}"
    if status in (InstanceStatus.PREEMPTED, InstanceStatus.TERMINATED, InstanceStatus.UNHEALTHY):
        return f"instance {instance.instance_id} is {status} at {provider.name}"
    return None
