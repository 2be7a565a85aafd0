"""`opsledger policy ...`: the rules as data."""

from __future__ import annotations

import click

from opsledger.errors import OpsledgerError
from opsledger.project import find_project


@click.group()
def policy() -> None:
    """Check the policies (people, approval rules, windows, SLA, waivers).

    \b
    Example:
        opsledger policy check
    """


@policy.command()
def check() -> None:
    """Lint policies/ and print the policy bundle hash; exit 2 on any problem.

    Finds unknown teams, people or environments, bad timezones and times, approval rules that
    never apply or cases no rule covers, and an incomplete SLA matrix.

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
