"""`saefleet fleet list` and `fleet preempt`: the instances saefleet launched, and a spot
interruption by hand on the local provider (`fleet teardown` lives in ops.teardown)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ops.cli_common import JsonFlag, console, emit_json, fail, store
from ops.views import instances_table
from queue_app.settings import get_settings

fleet_app = typer.Typer(help="The instances saefleet runs.", no_args_is_help=True)


@fleet_app.command("list")
def fleet_list(
    all_: Annotated[bool, typer.Option("--all", help="Include terminated instances.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Instances saefleet launched (live ones unless --all)."""
    instances = store().instances(live_only=not all_)
    if json_out:
        emit_json([i.model_dump(mode="json") | {"cost_usd": i.cost_usd()} for i in instances])
    else:
        console.print(instances_table(instances))


@fleet_app.command("preempt")
def fleet_preempt(
    instance_id: str,
    notice: Annotated[
        float, typer.Option("--notice", min=0, help="Seconds of interruption notice first.")
    ] = 0.0,
) -> None:
    """Kill a local-provider instance abruptly, as a spot interruption would; with --notice,
    tell the instance first and kill it that many seconds later (this command waits)."""
    from jobs.providers.local import LocalProvider

    settings = get_settings()
    instance = store().instance(instance_id)
    if instance.provider != "local":
        fail("only local-provider instances can be preempted on purpose", code=2)
    provider = LocalProvider(settings.local_instances_dir)
    if notice > 0:
        provider.preempt(instance_id, notice_s=notice)
        console.print(f"instance {instance_id} told it is preempted in {notice:g}s")
        time.sleep(notice)
    provider.preempt(instance_id)
    console.print(f"instance {instance_id} preempted")
