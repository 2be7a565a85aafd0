"""`opsledger inspect`: scheduled, read-only inspections of the hosts, recorded in git."""

from __future__ import annotations

import click

from opsledger.cli.options import one_or_due, output_option
from opsledger.project import find_project


@click.command()
@click.option("--schedule", help="A schedule of policies/inspections.yml (daily, weekly, ...).")
@click.option("--due", is_flag=True, help="Run every schedule that is due; report missed periods.")
@click.option("--env", "environment", default="lab", show_default=True)
@click.option("--targets", default="all", show_default=True, help="Ansible host pattern.")
@output_option("text", "md", "json", "html")
@click.option(
    "--fail-on",
    type=click.Choice(["warning", "critical"]),
    default="critical",
    show_default=True,
    help="Exit 1 when a finding reaches this severity.",
)
@click.option("--no-record", is_flag=True, help="Do not write and commit a record.")
def inspect(
    schedule: str | None,
    due: bool,
    environment: str,
    targets: str,
    fmt: str,
    fail_on: str,
    no_record: bool,
) -> None:
    """Run an inspection schedule's checks on every host in parallel (read-only).

    Findings carry a severity and the SLA priority it maps to. The result is recorded under
    records/inspections/ and committed. With --due, every periodic schedule whose period has
    passed runs, and periods that passed without any inspection are reported as missed.
    Exit 1 when a finding reaches --fail-on or an inspection was missed.

    \b
    Example:
        opsledger inspect --schedule daily --env lab
        opsledger inspect --due
    """
    from opsledger.inspections import SEVERITIES, due_states, render
    from opsledger.inspections import inspect as run_inspect

    one_or_due(schedule, due, "--schedule", "opsledger inspect --schedule daily")
    project = find_project()
    names = [schedule] if schedule else []
    failed = False
    if due:
        for state in due_states(project, environment=environment):
            last = state.last.isoformat() if state.last else "never"
            click.echo(
                f"{state.schedule}: last {last}, {'due' if state.due else 'not due'}"
                + (f", {state.missed} missed period(s)" if state.missed else "")
            )
            failed |= state.missed > 0
            if state.due:
                names.append(state.schedule)
    for name in names:
        result = run_inspect(
            project, schedule=name, environment=environment, targets=targets, record=not no_record
        )
        click.echo(render(result, fmt), nl=False)
        if result.incidents:  # on stderr when stdout is a document (json, md, html)
            click.echo(result.incidents, err=fmt != "text")
        failed |= SEVERITIES.index(result.worst()) >= SEVERITIES.index(fail_on)
    raise SystemExit(1 if failed else 0)
