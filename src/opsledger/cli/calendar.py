"""`opsledger calendar`: windows, freezes, scheduled changes, due inspections and drills."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from opsledger.cli.options import TIME, output_option
from opsledger.cli.output import left_out
from opsledger.project import find_project


@click.command()
@click.option("--env", "environment", help="Only this environment (default: every one).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 366))
@output_option("text", "json", "ics", help="ics: an iCalendar file a team can subscribe to.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--at", "at", type=TIME, help="Start the calendar at this time instead of now.")
def calendar(
    environment: str | None, days: int, fmt: str, output: Path | None, at: dt.datetime | None
) -> None:
    """The change calendar: maintenance windows, freezes, scheduled changes, due drills.

    Also the inspections that fall due, per environment, soonest first.

    \b
    Example:
        opsledger calendar --env production --days 14 --format ics -o production.ics
    """
    from opsledger.calendar import change_calendar, render_calendar

    cal = change_calendar(find_project(), days=days, environment=environment, now=at)
    text = render_calendar(cal, fmt)
    if output:
        output.write_text(text, newline="")
        click.echo(f"wrote {output} ({len(cal.entries)} entries)")
    else:
        click.echo(text, nl=False)
    left_out(cal.unreadable, "calendar")
