"""`opsledger host ...`: one host's own record, and the estate."""

from __future__ import annotations

from pathlib import Path

import click

from opsledger.cli.options import output_folder, output_option, write_output
from opsledger.project import find_project

_FORMAT = output_option("text", "json", "html")
_OUTPUT = click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output.",
)


def _emit(text: str, output: Path | None) -> None:
    if output:
        write_output(output, text, "--output")
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@click.group()
def host() -> None:
    """Each host's record from git: changes, patches, findings, drills, incidents, waivers.

    \b
    Example:
        opsledger host show lab-db1
    """


@host.command()
@click.argument("name")
@click.option("--env", "environment", help="The host's environment (default: the one that has it).")
@_FORMAT
@_OUTPUT
def show(name: str, environment: str | None, fmt: str, output: Path | None) -> None:
    """One host's record, read from the repository; no host is contacted.

    Inventory groups and key variables, the hardware record and OS its last converge
    recorded, the package snapshot of its last patch (with the backup before it and any
    rollback), every change run on it (result, when, by whom), inspections and drift with the
    findings still open, DR drills, incidents and the waivers that apply to it (run records as
    git has them).

    \b
    Example:
        opsledger host show lab-db1 --format html -o lab-db1.html
    """
    from opsledger.hostrecord import host_record
    from opsledger.views.host import render_host

    output_folder(output, "--output")
    _emit(render_host(host_record(find_project(), host=name, environment=environment), fmt), output)


@host.command("list")
@click.option("--env", "environment", help="Only this environment (default: all of them).")
@_FORMAT
@_OUTPUT
def list_(environment: str | None, fmt: str, output: Path | None) -> None:
    """The estate, a CMDB view of every host.

    Host, environment, groups, OS, last change, last patch and open findings.

    \b
    Example:
        opsledger host list --env lab
    """
    from opsledger.hostrecord import estate
    from opsledger.views.host import render_estate

    output_folder(output, "--output")
    _emit(render_estate(estate(find_project(), environment=environment), fmt), output)
