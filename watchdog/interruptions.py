"""Interruptions: the provider reports an instance that a live attempt uses as preempted,
terminated, unhealthy or unknown, and we did not ask for that. The attempt is preempted (see
watchdog.actions.interrupt) and the job resumes as attempt+1.

The provider is asked what happened (`provider_lost_instance`) before anything is done, so a
job's own failure is never mistaken for a preemption, nor the other way round."""

from __future__ import annotations

from jobs.instances import provider_lost_instance
from jobs.providers import InstanceStatus, ProviderError
from watchdog.actions import interrupt
from watchdog.context import TickContext
from watchdog.fleet import Fleet
from watchdog.provider_view import ProviderView

CHECK = "interruptions"
_RUNNING = (InstanceStatus.BOOTING, InstanceStatus.ACTIVE, InstanceStatus.TERMINATING)


def check_interruptions(ctx: TickContext, fleet: Fleet, view: ProviderView) -> set[str]:
    """Preempt the attempts whose instances the provider lost; returns those instance ids."""
    acted: set[str] = set()
    for tracked in fleet.in_use():
        instance = tracked.instance
        provider = view.providers.get(instance.provider)
        if provider is None or tracked.terminate_requested:
            continue
        listed = view.listed[instance.provider].get(instance.instance_id)
        if listed is not None and listed.status in _RUNNING:
            continue
        try:
            why = provider_lost_instance(provider, instance)
        except ProviderError as exc:
            ctx.report.error(CHECK, instance.instance_id, f"cannot ask {provider.name}: {exc}")
            continue
        if why and interrupt(ctx, CHECK, tracked, f"{why} (not requested by us)"):
            acted.add(instance.instance_id)
    return acted
