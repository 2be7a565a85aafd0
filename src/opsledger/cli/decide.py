"""`opsledger decide`: every rule's verdict on a change, from the protected branch's policies."""

from __future__ import annotations

import json

import click
from rich.table import Table

from opsledger.cli.options import aware_time, base_option
from opsledger.cli.output import console
from opsledger.errors import EXIT_DENIED
from opsledger.project import find_project


@click.command()
@click.argument("change_id")
@click.option("--at", "at", help="Judge at this ISO 8601 time instead of now.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@base_option
def decide(change_id: str, at: str | None, as_json: bool, base: str | None) -> None:
    """Evaluate every rule for a change; exit 0 when allowed, 3 when denied.

    Rules: requester, approvals (quorum, four eyes, teams, content, signatures), maintenance
    window, change window (judged now), freeze, promotion from staging, conflicts. Policies,
    keys and run records come from the protected branch (--base), never from your branch.

    \b
    Example:
        opsledger decide CHG-0001 --at 2026-12-01T20:30:00+01:00
    """
    from opsledger.decide import decide as run_decide
    from opsledger.nextsteps import after_denial

    project = find_project()
    decision = run_decide(project, change_id, now=aware_time(at, "--at"), base=base)
    if as_json:
        click.echo(json.dumps(decision.as_dict(), indent=2))
    else:
        table = Table(
            "rule",
            "result",
            "why",
            title=f"decide {change_id} ({decision.priority}, {decision.risk} risk)",
            show_lines=False,
        )
        for check in decision.checks:
            table.add_row(
                check.rule, "[green]pass[/green]" if check.passed else "[red]FAIL[/red]", check.why
            )
        console(minimum=120).print(table)
        click.echo(
            f"{'ALLOWED' if decision.allowed else 'DENIED'}; policy "
            f"{decision.policy_sha256[:12]}, content {decision.content_sha256[:12]}"
        )
        if not decision.allowed:
            for step in after_denial(project, decision):
                click.echo(f"next: {step}")
    if not decision.allowed:
        raise SystemExit(EXIT_DENIED)
