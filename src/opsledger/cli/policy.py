"""`opsledger policy ...`: the rules as data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from opsledger.cli.options import signing_key_option
from opsledger.errors import OpsledgerError
from opsledger.policy.files import POLICY_FILES
from opsledger.project import find_project


@click.group()
def policy() -> None:
    """Check, propose and print the schemas of the policies (people, rules, windows, SLA, ...).

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
    A note says when policies/ here differs from the policies in effect on the protected
    branch ($OPSLEDGER_BASE, default main): edits count once a policy change approves them.

    \b
    Example:
        opsledger policy check
    """
    from opsledger.policy.effect import policy_gap
    from opsledger.policycheck import policy_check

    project = find_project()
    result = policy_check(project)
    if result.problems:
        raise OpsledgerError(result.problems)
    counts = ", ".join(f"{n} {what}" for what, n in result.summary.items())
    click.echo(f"policies are consistent ({counts}); bundle sha256 {result.hash[:16]}")
    gap = policy_gap(project)
    if gap:
        click.echo(f"note: {gap}")


@policy.command()
@click.option("--title", required=True, help="One line saying what the policy change does.")
@click.option(
    "--requested-by",
    envvar="OPSLEDGER_PERSON",
    required=True,
    show_envvar=True,
    help="Your person id in policies/people.yml; set OPSLEDGER_PERSON to stop typing it.",
)
@click.option("--reason", required=True, help="Why the policies must change.")
@signing_key_option
def propose(title: str, requested_by: str, reason: str, signing_key: Path | None) -> None:
    """Request the policies/ edits you made as a policy change (POL-<n>); commit it with them.

    Writes changes/POL-<block>/POL-<n>/policy.yml and your request statement over the request
    and every file of policies/ as it is now. The edit takes effect once the policy owners
    approve it (`opsledger approve POL-<n>`) under the policies as they were before.

    \b
    Example:
        opsledger policy propose --title "Two approvals for staging" --requested-by alice \\
          --reason "Staging now holds customer data"
    """
    from opsledger.signoff import propose_policy_change

    request, statement = propose_policy_change(
        find_project(),
        title=title,
        requested_by=requested_by,
        reason=reason,
        signing_key=signing_key,
    )
    signed = "signed" if statement.signed else "unsigned"
    click.echo(f"{request.id}: wrote {request.file} and {statement.path} ({signed})")


@policy.command("schema")
@click.argument("name", type=click.Choice(list(POLICY_FILES)))
def schema_(name: str) -> None:
    """Print the JSON Schema of one policy file (people, changes, windows, sla, ...).

    \b
    Example:
        opsledger policy schema windows > windows.schema.json
    """
    from opsledger.policy.files import policy_schema

    click.echo(json.dumps(policy_schema(name), indent=2))
