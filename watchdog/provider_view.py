"""What each provider reports this tick: one `list()` per provider (not one call per instance),
for every provider that a live instance uses plus those named in `SAEFLEET_WATCHDOG_PROVIDERS`.
A provider that cannot be listed is recorded as failed; checks skip its instances this tick
rather than act on missing information."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.providers import Instance, Provider, ProviderError
from queue_app.jobspec import ProviderSpec
from watchdog.context import TickContext
from watchdog.fleet import Fleet


@dataclass(frozen=True)
class ProviderView:
    providers: dict[str, Provider]
    """By provider name."""
    listed: dict[str, dict[str, Instance]]
    """Provider name -> instance id -> instance (ours, not gone) as listed this tick."""
    failed: dict[str, str]
    """Provider name -> why it could not be listed."""


def observe_providers(ctx: TickContext, fleet: Fleet) -> ProviderView:
    specs: dict[str, ProviderSpec] = {
        name: ProviderSpec.model_validate({"name": name})
        for name in ctx.settings.watchdog_providers
    }
    for tracked in fleet.tracked:
        specs.setdefault(tracked.instance.provider, tracked.provider_spec)
    providers: dict[str, Provider] = {}
    listed: dict[str, dict[str, Instance]] = {}
    failed: dict[str, str] = {}
    for name, spec in specs.items():
        try:
            provider = ctx.providers(spec)
            listed[name] = {i.id: i for i in provider.list()}
        except (ProviderError, ValueError, OSError) as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            ctx.report.error("providers", name, f"cannot list instances: {exc}")
            continue
        providers[name] = provider
    return ProviderView(providers, listed, failed)
