"""`opsledger drift`: where hosts differ from git, and which role and variables own it."""

from __future__ import annotations

import json

import click

from opsledger.cli.options import output_option
from opsledger.project import find_project


@click.command()
@click.option("--env", "environment", default="lab", show_default=True)
@click.option("--targets", default="all", show_default=True, help="Ansible host pattern.")
@click.option("--no-record", is_flag=True, help="Do not write and commit a drift record.")
@output_option("text", "json", help="json: every drifted task.")
def drift(environment: str, targets: str, no_record: bool, fmt: str) -> None:
    """Compare hosts with the desired state in git (converge in check mode with diff).

    Each drifted task is named with its host, role, controls and the role variables behind
    it. The result is recorded under records/drift/ and committed. Exit 0 in sync, 1 drift
    (or a host that could not be checked).

    \b
    Example:
        opsledger drift --env lab
    """
    from opsledger.drift import drift as run_drift

    result = run_drift(
        find_project(), environment=environment, targets=targets, record=not no_record
    )
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "hosts": result.hosts,
                    "items": [i.__dict__ for i in result.items],
                    "incidents": result.incidents,
                },
                indent=2,
            )
        )
    else:
        for host, state in result.hosts.items():
            click.echo(f"{host}: {state}")
            for item in (i for i in result.items if i.host == host):
                owner = ", ".join(item.variables) or "no role variable"
                click.echo(f"  ~ {item.role}: {item.task} (set by {owner})")
        if result.record_path:
            click.echo(f"recorded {result.record_path.name} in {result.commit[:10]}")
        if result.incidents:
            click.echo(result.incidents)
    raise SystemExit(1 if result.drifted else 0)
