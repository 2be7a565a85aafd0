"""`opsledger report`: KPIs of changes and operations for managers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from opsledger.cli.options import output_folder, write_output
from opsledger.project import find_project


@click.command()
@click.option(
    "--period",
    default="90d",
    show_default=True,
    help="30d, 12w (ending now), a month 2026-11 or a quarter 2026-Q4.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    default="html",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output.",
)
def report(period: str, fmt: str, output: Path | None) -> None:
    """KPIs of changes and operations, as one page.

    Changes by type and priority, success and failure rates, lead time, emergency ratio, MTTR,
    SLA compliance, and inspection, drift and drill results.

    The HTML is self-contained (inline SVG charts): it opens anywhere without a network.

    \b
    Example:
        opsledger report --period 2026-Q4 -o report.html
    """
    from opsledger.report import kpis, parse_period, render

    output_folder(output, "--output")
    start, end = parse_period(period, dt.datetime.now(dt.UTC))
    text = render(kpis(find_project(), start=start, end=end), fmt)
    if output:
        write_output(output, text, "--output")
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
