"""`opsledger decide`: every rule's verdict on a change, from the protected branch's policies."""

from __future__ import annotations

import datetime as dt
import json

import click
from rich.table import Table

from opsledger.cli.options import TIME, base_option, output_option
from opsledger.cli.output import console
from opsledger.errors import EXIT_DENIED
from opsledger.project import find_project


@click.command()
@click.argument("change_id")
@click.option("--at", "at", type=TIME, help="Judge at this time instead of now.")
@output_option("text", "json", help="json: the decision, every rule with its result.")
@base_option
def decide(change_id: str, at: dt.datetime | None, fmt: str, base: str | None) -> None:
    """Evaluate every rule for a change; exit 0 when allowed, 3 when denied.

    Rules: requester, approvals (quorum, four eyes, teams, content, signatures), maintenance
    window, change window (judged now), freeze, promotion from staging, conflicts. Policies,
    keys and run records come from the protected branch (--base), never from your branch.

    \b
    Example:
        opsledger decide CHG-0001 --at 2026-12-01T20:30+01:00
        opsledger decide CHG-0001 --at +2h --json
    """
    from opsledger.decide import decide as run_decide
    from opsledger.nextsteps import after_denial

    project = find_project()
    decision = run_decide(project, change_id, now=at, base=base)
    if fmt == "json":
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
