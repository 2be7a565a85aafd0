"""`opsledger alerts ...`: Alertmanager's alerts as incidents, with their resolution as evidence."""

from __future__ import annotations

import json

import click

from opsledger.cli.options import output_option
from opsledger.project import find_project


@click.group()
def alerts() -> None:
    """Alerts from Prometheus and Alertmanager become incidents (and are resolved by evidence).

    \b
    Example:
        opsledger alerts sync --env lab
    """


@alerts.command()
@click.option("--env", "environment", default="lab", show_default=True)
@output_option("text", "json", help="json: what Alertmanager listed.")
def sync(environment: str, fmt: str) -> None:
    """Read the environment's Alertmanager; record its alerts; open, update, resolve incidents.

    The Alertmanager is the one the inventory names (`opsledger_alertmanager_url` on the
    monitoring host). Each alert (active, silenced or inhibited) opens an incident per
    fingerprint, with the class, hosts and runbook of its labels and the priority its severity
    has in policies/incidents.yml, or updates the open one. An alert that is gone while the
    Watchdog fires, with Prometheus (the Watchdog) and Alertmanager running since the alert was
    last seen, resolves its incident by that evidence; a person still closes it. The
    snapshot is committed under records/alerts/ unless it equals the last one. Exit 0 when
    nothing fires, 1 when alerts fire, 2 when Alertmanager cannot be read (nothing written).

    \b
    Example:
        opsledger alerts sync --env lab
    """
    from opsledger.faults.alerts import sync_alerts

    result = sync_alerts(find_project(), environment=environment)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "status": result.status.value,
                    "alertmanager": result.url,
                    "watchdog": result.watchdog,
                    "resolved": result.resolved,
                    "unproven": result.unproven,
                    "alerts": [a.finding() for a in result.alerts],
                    "record": str(result.record_path) if result.record_path else None,
                    "incidents": result.incidents,
                },
                indent=2,
            )
        )
    else:
        for alert in result.alerts:
            where = ",".join(alert.hosts) or "-"
            quiet = " (silenced or inhibited)" if alert.state == "suppressed" else ""
            click.echo(f"{alert.priority or '-'} {alert.name} {where}: {alert.summary}{quiet}")
        if not result.watchdog:
            click.echo(
                "Watchdog missing: Prometheus may not be evaluating rules; nothing is resolved"
            )
        for fingerprint, why in result.unproven.items():
            click.echo(f"gone, not proven resolved: {fingerprint}: {why}")
        if result.record_path:
            click.echo(f"recorded {result.record_path.name} in {result.commit[:10]}")
        else:
            click.echo(f"{len(result.alerts)} alert(s); {result.status.value}: nothing written")
        if result.incidents:
            click.echo(result.incidents)
    raise SystemExit(1 if result.alerts else 0)
