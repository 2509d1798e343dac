"""The tunnel service: one SSH reverse port forward per live instance, so that the GPU-side
worker on an instance reaches the control plane's Redis (a cloud instance cannot reach a Redis
on a laptop). It reconnects when an SSH session drops, asking for the same remote port again so
the worker's broker URL stays valid. Run it with `python -m jobs.tunnels` (`saefleet up` does).
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jobs.instances import open_ssh
from jobs.ssh import SSHError, SSHSession
from queue_app.connection import get_store
from queue_app.logs import log_context, setup_logging
from queue_app.records import InstanceRecord
from queue_app.settings import Settings, get_settings
from queue_app.statemachine import InstanceState
from queue_app.store import Store

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0
KEEPALIVE_S = 15
BUFFER = 64 * 1024


def tunnel_broker_url(broker_url: str, remote_port: int) -> str:
    """`broker_url` as seen from the instance: the same credentials and database, reached at
    127.0.0.1:`remote_port` (the instance's end of the reverse forward)."""
    parts = urlsplit(broker_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{remote_port}" if credentials else f"127.0.0.1:{remote_port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _pump(channel: Any, upstream: socket.socket) -> None:
    """Copy bytes both ways between a forwarded SSH channel and the local Redis socket."""
    try:
        while True:
            readable, _, _ = select.select([channel, upstream], [], [], 30)
            if channel in readable:
                data = channel.recv(BUFFER)
                if not data:
                    break
                upstream.sendall(data)
            if upstream in readable:
                data = upstream.recv(BUFFER)
                if not data:
                    break
                channel.sendall(data)
    except OSError:
        pass
    finally:
        channel.close()
        upstream.close()


class Tunnel:
    """A reverse forward from 127.0.0.1:<port> on one instance to the local Redis."""

    def __init__(self, instance: InstanceRecord, settings: Settings, redis_addr: tuple[str, int]):
        self.instance_id = instance.instance_id
        self.redis_addr = redis_addr
        self.session: SSHSession = open_ssh(instance, settings)
        try:
            self.session.transport.set_keepalive(KEEPALIVE_S)
            self.port = self.session.forward_remote_port(instance.broker_port or 0, self._accept)
        except BaseException:
            self.session.close()
            raise

    def _accept(self, channel: Any, origin: Any, server: Any) -> None:
        try:
            upstream = socket.create_connection(self.redis_addr, timeout=10)
        except OSError as exc:
            log.warning("tunnel %s: cannot reach Redis: %s", self.instance_id, exc)
            channel.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(channel, upstream), daemon=True).start()

    @property
    def alive(self) -> bool:
        return bool(self.session.transport.is_active())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.transport.cancel_port_forward("127.0.0.1", self.port)
        self.session.close()


class TunnelService:
    """Keeps a tunnel open to every live instance that has an SSH address."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        parts = urlsplit(settings.broker_url)
        self.redis_addr = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.tunnels: dict[str, Tunnel] = {}
        self._stop = threading.Event()

    def sync_once(self) -> None:
        wanted = {
            i.instance_id: i
            for i in self.store.instances(live_only=True)
            if i.host and i.state is InstanceState.LAUNCHED
        }
        for instance_id in list(self.tunnels):
            tunnel = self.tunnels[instance_id]
            if instance_id not in wanted or not tunnel.alive:
                tunnel.close()
                del self.tunnels[instance_id]
                if instance_id in wanted:
                    log.warning("tunnel to %s dropped; reconnecting", instance_id)
        for instance_id, instance in wanted.items():
            if instance_id not in self.tunnels:
                self._open(instance)

    def _open(self, instance: InstanceRecord) -> None:
        with log_context(instance=instance.instance_id, job=instance.job_id):
            try:
                tunnel = Tunnel(instance, self.settings, self.redis_addr)
            except (SSHError, ValueError) as exc:
                log.info("tunnel to %s not up yet: %s", instance.instance_id, exc)
                return
            self.tunnels[instance.instance_id] = tunnel
            if tunnel.port != instance.broker_port:
                self.store.update_instance(instance.instance_id, broker_port=tunnel.port)
            log.info("tunnel up: instance 127.0.0.1:%d -> redis", tunnel.port)

    def run(self, interval_s: float = SYNC_INTERVAL_S) -> None:
        log.info("tunnel service running")
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:
                log.exception("tunnel sync failed; retrying")
            self._stop.wait(interval_s)
        for tunnel in self.tunnels.values():
            tunnel.close()
        log.info("tunnel service stopped")

    def stop(self, *_: Any) -> None:
        self._stop.set()


def main() -> None:
    settings = get_settings()
    setup_logging("tunnels", settings.logs_dir, settings.log_level)
    service = TunnelService(settings, get_store(settings))
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.run()


if __name__ == "__main__":
    main()
