"""`opsledger policy ...`: the rules as data."""

from __future__ import annotations

import json

import click

from opsledger.errors import OpsledgerError
from opsledger.policyfiles import POLICY_FILES
from opsledger.project import find_project


@click.group()
def policy() -> None:
    """Check the policies and print their schemas (people, rules, windows, SLA, waivers, ...).

    \b
    Example:
        opsledger policy check
    """


@policy.command()
def check() -> None:
    """Lint policies/ and print the policy bundle hash; exit 2 on any problem.

    Every policy file is checked against its JSON Schema (opsledger policy schema NAME), then
    for unknown teams, people or environments, bad timezones and times, approval rules that
    never apply, quorums nobody can meet, teams without members, cases no rule covers, and an
    incomplete SLA matrix. decide, plan, apply and ci refuse to decide while this fails.

    \b
    Example:
        opsledger policy check
    """
    from opsledger.policy import policy_check

    result = policy_check(find_project())
    if result.problems:
        raise OpsledgerError(result.problems)
    counts = ", ".join(f"{n} {what}" for what, n in result.summary.items())
    click.echo(f"policies are consistent ({counts}); bundle sha256 {result.hash[:16]}")


@policy.command("schema")
@click.argument("name", type=click.Choice(list(POLICY_FILES)))
def schema_(name: str) -> None:
    """Print the JSON Schema of one policy file (people, changes, windows, sla, ...).

    \b
    Example:
        opsledger policy schema windows > windows.schema.json
    """
    from opsledger.policyfiles import policy_schema

    click.echo(json.dumps(policy_schema(name), indent=2))
