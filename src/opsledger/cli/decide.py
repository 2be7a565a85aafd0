"""`opsledger approve` and `opsledger decide`: approvals bound to content, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from opsledger.cli.options import (
    aware_time,
    base_option,
    person_option,
    signing_key_option,
    verbosity_option,
)
from opsledger.cli.output import console
from opsledger.errors import EXIT_DENIED
from opsledger.project import find_project


@click.command()
@click.argument("change_id")
@click.option("--reject", is_flag=True, help="Record a rejection instead of an approval.")
@click.option("--comment", default="", help="Why (kept in the approval file).")
@person_option
@signing_key_option
def approve(
    change_id: str, reject: bool, comment: str, person: str, signing_key: Path | None
) -> None:
    """Approve (or reject) a change's current content and commit it as you, signed with --key.

    Writes changes/<ID>/approvals/<person>/<time>.yml: a statement naming the sha256 of every
    file git tracks but bookkeeping (statements, run records, other changes, records/), signed
    with your SSH key (ssh-keygen -Y sign). Editing any of it later voids the approval; a
    rejection stands until you approve again. Works for policy changes (POL-<n>) too.

    \b
    Example:
        opsledger approve CHG-0001 --as bob --key ~/.ssh/id_ed25519
    """
    from opsledger.signoff import approve_change

    project = find_project()
    result = approve_change(
        project,
        change_id,
        person=person,
        decision="rejected" if reject else "approved",
        comment=comment,
        signing_key=signing_key,
    )
    from opsledger.nextsteps import after_approval

    verb = "rejected" if reject else "approved"
    click.echo(
        f"{change_id} {verb} by {person}: content {result.content_sha256[:12]}, "
        f"commit {result.commit[:10]}"
    )
    if not reject:
        for step in after_approval(project, change_id):
            click.echo(f"next: {step}")
    from opsledger.policy.effect import policy_gap

    gap = policy_gap(project)
    if gap:
        click.echo(f"note: {gap}")


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


@click.command()
@click.argument("change_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "md", "json"]),
    default="text",
    show_default=True,
    help="md is meant for a pull-request comment.",
)
@click.option("--at", "at", help="Judge the rules at this ISO 8601 time instead of now.")
@click.option(
    "--detailed-exitcode",
    "detailed",
    is_flag=True,
    help="Exit 0 only when no host would change, 5 when some would (or cannot be predicted).",
)
@verbosity_option
@base_option
def plan(
    change_id: str, fmt: str, at: str | None, detailed: bool, verbosity: int, base: str | None
) -> None:
    """Decide, then show per host what the change would do (check mode with diff).

    Exits 0 when the change is allowed, 3 when denied (the prediction is shown either way),
    1 when the check run failed on a host for a real error (a missing file, a failing lookup:
    it would fail the apply too), named per host. With --detailed-exitcode (as Terraform's),
    an allowed plan exits 0 when no host would change and 5 when some would. -v/-vv pass on
    to ansible-playbook; its output goes to stderr.

    \b
    Example:
        opsledger plan CHG-0001 --format md > plan.md
        opsledger plan CHG-0001 --detailed-exitcode -v   # in CI: 0 nothing to do, 5 changes
    """
    from opsledger.plan import exit_code, render
    from opsledger.plan import plan as run_plan

    result = run_plan(
        find_project(), change_id, now=aware_time(at, "--at"), base=base, verbosity=verbosity
    )
    click.echo(render(result, fmt), nl=False)
    for host in result.errors:
        click.secho(f"error: {host.host}: {host.note}", fg="red", err=True)
    raise SystemExit(exit_code(result, detailed=detailed))
