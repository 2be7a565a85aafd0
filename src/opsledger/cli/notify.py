"""`opsledger notify ...`: try the channels, tell SLA (near) breaches (notifications.yml)."""

from __future__ import annotations

import datetime as dt

import click

from opsledger.cli.options import DurationType
from opsledger.errors import OpsledgerError, Problem
from opsledger.project import find_project


@click.group()
def notify() -> None:
    """Notifications to the team's channels (Slack, Teams, Matrix, e-mail, webhooks).

    \b
    Example:
        opsledger notify test --env production --event apply_failed
    """


@notify.command("test")
@click.option("--env", "environment", default="lab", show_default=True)
@click.option("--event", default="apply_failed", show_default=True, help="The event to route.")
def test_(environment: str, event: str) -> None:
    """Send a test notice through the routes of EVENT in ENV; exit 1 when a channel fails.

    The channels' URLs come from the variables policies/notifications.yml names (url_env).

    \b
    Example:
        opsledger notify test --env production --event apply_failed
    """
    from opsledger.notify import EVENTS, Notice, Severity
    from opsledger.notify import notify as send

    if event not in EVENTS:
        raise OpsledgerError(
            Problem(f"unknown event {event!r}", field="--event", fix=f"use: {', '.join(EVENTS)}")
        )
    result = send(
        find_project(),
        Notice(
            (event,),
            environment,
            f"[{environment}] opsledger test notice",
            f"A test of the {event} route of {environment}.",
            Severity.INFO,
            "test",
        ),
    )
    if result.problems:
        raise OpsledgerError(result.problems)
    for delivery in result.deliveries:
        click.echo(
            f"{delivery.channel} ({delivery.kind}): {delivery.status}"
            + (f" — {delivery.error}" if delivery.error else "")
        )
    if not result.deliveries:
        click.echo(f"no channel is routed {event} in {environment}")
    raise SystemExit(1 if result.failed else 0)


@notify.command("breaches")
@click.option("--env", "environment", help="Only incidents of this environment.")
@click.option(
    "--within",
    default="15m",
    show_default=True,
    type=DurationType(dt.timedelta(minutes=1), dt.timedelta(days=31)),
    help="How far back: run this often.",
)
def breaches(environment: str | None, within: dt.timedelta) -> None:
    """Tell the channels of incident SLA clocks that passed, or came near, their target.

    Within the period: a clock past its target (sla_breach), or past the near-breach share of
    it (sla.yml near_breach_percent: sla_near_breach).

    Run it on a schedule as often as --within (a failed delivery is reported, never exit 1:
    the breach itself is in `opsledger incident list --breaching` and `audit check`). An
    incident file that does not read is named and the command exits 2 after telling the others.

    \b
    Example:
        opsledger notify breaches --env production --within 15m
    """
    from opsledger.notify import notify_breaches
    from opsledger.timespec import format_duration

    report = notify_breaches(find_project(), environment=environment, within=within)
    told = [
        *((b, r, "breached at") for b, r in zip(report.breaches, report.results, strict=True)),
        *(
            (b, r, "near breach, due")
            for b, r in zip(report.near, report.near_results, strict=True)
        ),
    ]
    for (incident, clock, due), result, what in told:
        click.echo(f"{incident}: {clock} SLA {what} {due.isoformat(timespec='minutes')}")
        for line in result.lines():
            click.echo(f"  {line}", err=True)
    if not told and not report.unreadable:
        click.echo(f"no SLA breach or near breach in the last {format_duration(within)}")
    if report.unreadable:  # the readable ones were told; these could not be judged
        raise OpsledgerError(report.unreadable)
