"""`opsledger plan`: what a change would do on each host (check mode with diff)."""

from __future__ import annotations

import datetime as dt

import click

from opsledger.cli.options import TIME, base_option, output_option, verbosity_option
from opsledger.project import find_project


@click.command()
@click.argument("change_id")
@output_option("text", "md", "json", help="md is meant for a pull-request comment.")
@click.option("--at", "at", type=TIME, help="Judge the rules at this time instead of now.")
@click.option(
    "--detailed-exitcode",
    "detailed",
    is_flag=True,
    help="Exit 0 only when no host would change, 5 when some would (or cannot be predicted).",
)
@verbosity_option
@base_option
def plan(
    change_id: str,
    fmt: str,
    at: dt.datetime | None,
    detailed: bool,
    verbosity: int,
    base: str | None,
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

    result = run_plan(find_project(), change_id, now=at, base=base, verbosity=verbosity)
    click.echo(render(result, fmt), nl=False)
    for host in result.errors:
        click.secho(f"error: {host.host}: {host.note}", fg="red", err=True)
    raise SystemExit(exit_code(result, detailed=detailed))
