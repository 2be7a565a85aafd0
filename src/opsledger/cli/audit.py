"""`opsledger audit ...`: the change log from git history, for auditors."""

from __future__ import annotations

import datetime as dt

import click
from rich.markup import escape
from rich.table import Table

from opsledger.cli.options import TIME, output_option
from opsledger.cli.output import console, left_out
from opsledger.project import find_project


@click.group()
def audit() -> None:
    """Read git history as the change log.

    \b
    Example:
        opsledger audit log --since 2026-01-01T00:00Z --format csv > changes.csv
    """


@audit.command("log")
@click.option("--since", type=TIME, help="Changes requested at or after this time.")
@click.option("--until", type=TIME, help="Changes requested at or before this time.")
@click.option("--env", "environment", help="Only this environment.")
@click.option(
    "--type", "change_type", type=click.Choice(["standard", "normal", "emergency"]), default=None
)
@output_option("text", "md", "json", "csv", "html", aliases={"table": "text"})
def log(
    since: dt.datetime | None,
    until: dt.datetime | None,
    environment: str | None,
    change_type: str | None,
    fmt: str,
) -> None:
    """One row per change: request, approvers and their signatures, run, result, review, commits.

    Built from git history (who committed what, when) and the run records those commits added.
    A committed change that cannot be read is named on stderr and the command exits 1: the log
    is then incomplete.

    \b
    Example:
        opsledger audit log --env production --format html > audit.html
    """
    from opsledger.audit import audit_log, render_log

    result = audit_log(
        find_project(),
        since=since,
        until=until,
        environment=environment,
        change_type=change_type,
    )
    if fmt != "text":
        click.echo(render_log(result, fmt), nl=False)
    else:
        _log_table(result)
    left_out(result.unreadable, "log")


def _log_table(result) -> None:
    shown = (
        "change",
        "type",
        "priority",
        "requester",
        "approvers",
        "applied_at",
        "result",
        "verification",
        "review",
    )
    table = Table(*shown, title=f"audit log: {len(result.rows)} change(s)")
    for row in result.rows:
        flat = row.flat()
        table.add_row(*(escape(str(flat[c])) for c in shown))
    console(minimum=140).print(table)


@audit.command("check")
@click.option("--since", type=TIME, help="Only changes requested at or after this time.")
@click.option(
    "--fail-on",
    type=click.Choice(["low", "medium", "high", "critical"]),
    default="high",
    show_default=True,
    help="Exit 1 when a finding reaches this severity.",
)
@output_option("text", "json", help="json: the findings.")
def check(since: dt.datetime | None, fail_on: str, fmt: str) -> None:
    """Compliance findings from git history, each with its rule, file and commit(s).

    Edited or deleted records and approvals, self- or stranger approvals, unsigned commits
    where policy requires signatures, runs without a valid quorum, outside their window or in
    a freeze, missing or late reviews of emergency changes, expired or self-approved waivers.

    \b
    Example:
        opsledger audit check --fail-on medium
    """
    from opsledger.audit import audit_check

    result = audit_check(find_project(), since=since)
    if fmt == "json":
        click.echo(result.as_json(), nl=False)
    else:
        for finding in result.findings:
            click.echo(str(finding))
        click.echo(f"{len(result.findings)} finding(s) in {result.commits_read} commit(s) read")
        if result.findings and result.baseline is None:
            click.echo(
                "hint: no audit baseline is set, so the whole history is judged, including what "
                "was done before this repository adopted opsledger: set `audit: {from: <ISO "
                "time>}` in policies/changes.yml (e.g. the time of adoption; a policy change: "
                "opsledger policy propose) to judge only what came after",
                err=True,
            )
    if result.at_least(fail_on):
        raise SystemExit(1)
