"""`opsledger report`: KPIs of changes, operations and incidents; the monthly service report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from opsledger.cli.options import output_folder, output_option, write_output
from opsledger.project import find_project


def _last_month(now: dt.datetime) -> str:
    first = now.replace(day=1)
    return f"{(first - dt.timedelta(days=1)):%Y-%m}"


@click.command()
@click.option(
    "--period",
    default=None,
    help="A duration ending now (30d, 12w), a month 2026-11 or a quarter 2026-Q4. Default: "
    "90d, or the last whole month with --service.",
)
@click.option(
    "--env",
    "environment",
    help="Only this environment, e.g. production (default: all of them, with a table per "
    "environment, production first).",
)
@click.option("--service", is_flag=True, help="The monthly service report for the business.")
@output_option("html", "md", "json", default="html")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output.",
)
def report(
    period: str | None, environment: str | None, service: bool, fmt: str, output: Path | None
) -> None:
    """KPIs of changes, operations and incidents, as one page.

    Changes by type and priority, change success rate (final result success) and changes that
    failed at least once, lead time, emergency ratio, MTTR, change SLA compliance; inspection,
    drift and drill results, findings per week of the whole period by severity; incidents by
    class and priority, MTTA, MTTR, incident SLA compliance, repeat incidents, open problems.
    Every card says what it counts and the target behind its colour. A period with no data
    says which commands produce it. --service
    lays them out as the service report (system status, faults and their handling, changes,
    drills, inspections, improvement actions).

    The HTML is self-contained (inline SVG charts): it opens anywhere without a network.

    \b
    Example:
        opsledger report --period 2026-Q4 -o report.html
        opsledger report --env production --format md
        opsledger report --service --period 2026-11 --env production --format md
    """
    from opsledger.report import kpis, parse_period, render
    from opsledger.views.service_report import render_service

    output_folder(output, "--output")
    now = dt.datetime.now(dt.UTC)
    default = _last_month(now) if service else "90d"
    start, end = parse_period(default if period is None else period, now)
    k = kpis(find_project(), start=start, end=end, environment=environment)
    text = render_service(k, fmt) if service and fmt != "json" else render(k, fmt)
    if output:
        write_output(output, text, "--output")
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
