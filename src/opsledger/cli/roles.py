"""`opsledger roles ...`: keep role documentation generated from the roles themselves."""

from __future__ import annotations

import click

from opsledger.cli.options import output_option
from opsledger.errors import EXIT_FAILED, OpsledgerError
from opsledger.layout import policies_folder
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


@roles.command()
@click.option(
    "--benchmark",
    required=True,
    help="Benchmark named in roles/*/meta/controls.yml (cis, devsec, lynis).",
)
@output_option(
    "text",
    "md",
    "json",
    aliases={"markdown": "md"},
    help="text for a terminal, md for a report, json for tools.",
)
def controls(benchmark: str, fmt: str) -> None:
    """Compliance table: control id -> benchmark reference -> task -> test -> waiver.

    References are data next to each control (roles/<role>/meta/controls.yml); tasks and
    tests come from the roles themselves, waivers from policies/waivers.yml. A control with
    no reference in the benchmark shows "—". Exits 2 naming file and field when a controls
    file is malformed or names a control no task implements.

    \b
    Example:
        opsledger roles controls --benchmark cis --format md
    """
    import dataclasses
    import json

    from rich.table import Table

    from opsledger.cli.output import console
    from opsledger.rolecontrols import control_table, render_markdown

    project = find_project()
    table = control_table(
        roles_dir=project.root / "roles",
        tests_dir=project.root / "tests" / "infra",
        waivers_path=policies_folder(project.root, "waivers.yml"),
        benchmark=benchmark,
    )
    if fmt == "json":
        rows = [dataclasses.asdict(r) for r in table.rows]
        click.echo(json.dumps({"benchmark": table.benchmark, "title": table.title, "rows": rows}))
        return
    if fmt == "md":
        click.echo(render_markdown(table), nl=False)
        return
    view = Table(
        title=f"{table.title}: {len(table.rows)} controls, {len(table.unmapped())} unmapped"
    )
    for column in ("control", benchmark, "task", "test", "waiver"):
        view.add_column(column)
    for row in table.rows:
        view.add_row(
            row.control,
            ", ".join(row.references) or "—",
            "; ".join(row.tasks),
            ", ".join(row.tests),
            "; ".join(w.split(":", 1)[0] for w in row.waivers) or "—",
        )
    console().print(view)
