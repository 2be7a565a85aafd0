"""`opsledger roles ...`: keep role documentation generated from the roles themselves."""

from __future__ import annotations

import click

from opsledger.errors import EXIT_FAILED, OpsledgerError
from opsledger.project import find_project


@click.group()
def roles() -> None:
    """Role documentation and consistency checks.

    \b
    Example:
        opsledger roles docs --check
    """


@roles.command()
@click.option("--check", is_flag=True, help="Only report stale READMEs and role problems.")
def docs(check: bool) -> None:
    """Generate each role's README from argument_specs, task control ids and tests.

    Also checks that defaults/main.yml and meta/argument_specs.yml agree and that every
    control id has both a task and a Testinfra test. With --check, exits 1 when a README is
    out of date, 2 when a role has a problem.

    \b
    Example:
        opsledger roles docs
    """
    from opsledger.roledocs import roles_docs

    project = find_project()
    result = roles_docs(project.root / "roles", project.root / "tests" / "infra", check=check)
    if result.problems:
        raise OpsledgerError(result.problems)
    for path in result.written:
        click.echo(f"wrote {path}")
    for path in result.stale:
        click.echo(f"stale: {path} (run `opsledger roles docs`)", err=True)
    if result.stale:
        raise SystemExit(EXIT_FAILED)
    if not result.written and not result.stale:
        click.echo("role READMEs are up to date")
