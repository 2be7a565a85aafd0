"""`opsledger runbook ...`: the named procedures a change can run."""

from __future__ import annotations

import json

import click
import yaml
from rich.table import Table

from opsledger.cli.options import output_option
from opsledger.cli.output import console
from opsledger.project import find_project


@click.group()
def runbook() -> None:
    """List and describe runbooks (runbooks/<name>/runbook.yml).

    \b
    Example:
        opsledger runbook list
    """


@runbook.command("list")
@output_option("text", "json", help="json: each runbook's metadata, as runbook show prints it.")
def list_(fmt: str) -> None:
    """List every runbook with its risk, change types and verification.

    \b
    Example:
        opsledger runbook list
    """
    from opsledger.runbooks import list_runbooks

    found = list_runbooks(find_project())
    if fmt == "json":
        click.echo(json.dumps([{"name": rb.name, **rb.raw} for rb in found], indent=2, default=str))
        return
    table = Table(
        "runbook",
        "risk",
        "change types",
        "pre-approved",
        "check mode",
        "verify",
        "rollback",
        title="runbooks",
    )
    for rb in found:
        table.add_row(
            rb.name,
            rb.risk,
            ", ".join(rb.change_types),
            "yes" if rb.standard else "",
            "predicts" if rb.check_mode else "no",
            ", ".join(rb.verify_suites) or "-",
            rb.rollback or "-",
        )
    console().print(table)


@runbook.command()
@click.argument("name")
@output_option("text", "json", help="json: the metadata.")
def show(name: str, fmt: str) -> None:
    """Show one runbook: description, parameters, risk, verification, rollback, execution.

    \b
    Example:
        opsledger runbook show service-restart
    """
    from opsledger.runbooks import load_runbook

    rb = load_runbook(find_project(), name)
    if fmt == "json":
        click.echo(json.dumps({"name": rb.name, **rb.raw}, indent=2, default=str))
        return
    click.echo(f"{rb.name}: {rb.description}\n")
    click.echo(
        yaml.safe_dump(
            {k: v for k, v in rb.raw.items() if k != "description"}, sort_keys=False, width=100
        ).rstrip()
    )


@runbook.command()
@click.argument("names", nargs=-1)
def check(names: tuple[str, ...]) -> None:
    """Check that runbook metadata is what the plays run with (default: every runbook).

    serial and max_fail_percentage of runbook.yml must be what every play that can change a
    host says (imported playbooks followed); exit 2 on a mismatch, naming the play and the fix.

    \b
    Example:
        opsledger runbook check os-patch
    """
    from opsledger.errors import OpsledgerError
    from opsledger.runbooks import CheckStatus, check_runbooks

    result = check_runbooks(find_project(), list(names) or None)
    if result.status is CheckStatus.DISAGREES:
        raise OpsledgerError(result.problems)
    click.echo(f"{len(result.checked)} runbook(s): metadata agrees with the plays")
