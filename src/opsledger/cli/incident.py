"""`opsledger incident ...`: faults recorded, handled and closed in git, with SLA clocks."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources

import click
from rich.markup import escape
from rich.table import Table

from opsledger.cli.options import (
    TIME,
    DurationType,
    output_option,
    person_option,
    signing_key_option,
)
from opsledger.cli.output import console
from opsledger.errors import EXIT_FAILED, EXIT_INVALID
from opsledger.project import find_project

LEVELS = click.Choice(["low", "medium", "high"])


def _done(result, what: str) -> None:
    click.echo(
        f"{result.incident.id}: {what} — status {result.status.value}, commit {result.commit[:10]}"
    )


@click.group()
def incident() -> None:
    """Record, handle and close incidents; SLA clocks run on git time.

    \b
    Example:
        opsledger incident list --breaching
    """


@incident.command("new")
@click.option("--title", required=True, help="One line saying what is broken.")
@click.option("--class", "klass", required=True, help="hardware, software, network, ...")
@click.option("--impact", required=True, type=LEVELS, help="How much service is affected.")
@click.option("--urgency", required=True, type=LEVELS, help="How soon it must be fixed.")
@click.option("--env", "environment", default="lab", show_default=True)
@click.option("--host", "hosts", multiple=True, help="Affected host (repeatable).")
@click.option("--service", "services", multiple=True, help="Affected service (repeatable).")
@click.option("--source", default="user_report", show_default=True, help="user_report, alert...")
@click.option("--detected-at", type=TIME, help="When it was found, e.g. -30m (default: now).")
@click.option("--assignee", help="A person of policies/people.yml.")
@click.option("--fingerprint", help="An alert's identity: repeats update the open incident.")
@click.option("--note", default="", help="What was reported.")
@person_option
@signing_key_option
def new(
    title,
    klass,
    impact,
    urgency,
    environment,
    hosts,
    services,
    source,
    detected_at,
    assignee,
    fingerprint,
    note,
    person,
    signing_key,
) -> None:
    """Open an incident (a user report or an alert), committed as you.

    impact x urgency gives the priority (policies/sla.yml) and with it the response and
    resolution targets. With --fingerprint, an active incident that has it takes the report
    instead of a duplicate.

    \b
    Example:
        opsledger incident new --title "Orders page times out" --class software \\
          --impact high --urgency high --env production --host prod-app1 --as alice
    """
    from opsledger.faults.incidents import open_incident

    result = open_incident(
        find_project(),
        title=title,
        person=person,
        klass=klass,
        impact=impact,
        urgency=urgency,
        environment=environment,
        hosts=hosts,
        services=services,
        source=source,
        detected_at=detected_at,
        assignee=assignee,
        fingerprint=fingerprint,
        note=note,
        signing_key=signing_key,
    )
    verb = "opened" if result.step.value == "opened" else "updated (same fingerprint)"
    _done(result, f"{verb}, {result.incident.priority}")


@incident.command()
@click.argument("incident_id")
@click.option("--note", default="", help="What you do first.")
@person_option
@signing_key_option
def ack(incident_id, note, person, signing_key) -> None:
    """Acknowledge an incident: the response clock stops; unassigned, it is yours.

    \b
    Example:
        opsledger incident ack INC-0001 --as bob
    """
    from opsledger.faults.incidents import acknowledge

    result = acknowledge(
        find_project(), incident_id, person=person, note=note, signing_key=signing_key
    )
    _done(result, f"acknowledged by {person}")


@incident.command()
@click.argument("incident_id")
@click.option("--to", "to", required=True, help="A person of policies/people.yml.")
@click.option("--note", default="")
@person_option
@signing_key_option
def assign(incident_id, to, note, person, signing_key) -> None:
    """Give an incident to someone.

    \b
    Example:
        opsledger incident assign INC-0001 --to carol --as bob
    """
    from opsledger.faults.incidents import assign as assign_incident

    result = assign_incident(
        find_project(), incident_id, person=person, to=to, note=note, signing_key=signing_key
    )
    _done(result, f"assigned to {to}")


@incident.command()
@click.argument("incident_id")
@click.option("--text", required=True, help="What you found or did.")
@person_option
@signing_key_option
def note(incident_id, text, person, signing_key) -> None:
    """Add a note to the incident's timeline (the handling record).

    \b
    Example:
        opsledger incident note INC-0001 --text "postgres log: could not write to disk" --as bob
    """
    from opsledger.faults.incidents import add_note

    result = add_note(
        find_project(), incident_id, person=person, text=text, signing_key=signing_key
    )
    _done(result, "noted")


@incident.command()
@click.argument("incident_id")
@click.option("--reason", required=True, help="Who you wait for, and why.")
@person_option
@signing_key_option
def pause(incident_id, reason, person, signing_key) -> None:
    """Pause the resolution clock while waiting on the customer (priorities sla.yml allows).

    \b
    Example:
        opsledger incident pause INC-0004 --reason "waiting on the customer for a window" --as bob
    """
    from opsledger.faults.incidents import pause as pause_incident

    result = pause_incident(
        find_project(), incident_id, person=person, reason=reason, signing_key=signing_key
    )
    _done(result, "clock paused")


@incident.command()
@click.argument("incident_id")
@click.option("--note", default="")
@person_option
@signing_key_option
def resume(incident_id, note, person, signing_key) -> None:
    """Start the resolution clock again after a pause.

    \b
    Example:
        opsledger incident resume INC-0004 --note "customer answered" --as bob
    """
    from opsledger.faults.incidents import resume as resume_incident

    result = resume_incident(
        find_project(), incident_id, person=person, note=note, signing_key=signing_key
    )
    _done(result, "clock running again")


@incident.command()
@click.argument("incident_id")
@click.option("--host", "hosts", multiple=True, help="Only these hosts (default: affected).")
@person_option
@signing_key_option
def collect(incident_id, hosts, person, signing_key) -> None:
    """Run the class's read-only diagnostics on the affected hosts (SSH) and attach the output.

    Commands come from policies/incidents.yml (per fault class); one that could change a host
    is refused before any host is contacted. Output is size-bounded, secrets are scrubbed,
    each host's file is stamped with the host's name and clock. Exit 1 when no host answered.

    \b
    Example:
        opsledger incident collect INC-0001 --as bob
    """
    from opsledger.faults.diagnostics import CollectStatus
    from opsledger.faults.diagnostics import collect as collect_diagnostics

    result = collect_diagnostics(
        find_project(), incident_id, person=person, hosts=hosts, signing_key=signing_key
    )
    for host in result.hosts:
        state = host.error or f"{len(host.commands)} command(s), host clock {host.host_time}"
        click.echo(f"  {host.host}: {state}")
    click.echo(
        f"{incident_id}: diagnostics {result.status.value} — "
        + ", ".join(str(p.name) for p in result.files)
        + f", commit {result.commit[:10]}"
    )
    if result.status == CollectStatus.FAILED:
        raise SystemExit(EXIT_FAILED)


@incident.command("verify")
@click.argument("incident_id")
@click.option("--suite", "suites", multiple=True, help="Suite to run; repeatable (default all).")
@person_option
@signing_key_option
def verify_(incident_id, suites, person, signing_key) -> None:
    """Recovery test: verify the affected hosts (Testinfra suites) and record the outcome.

    A passing test lets you resolve with --recovery-test. Exit 1 when it fails (recorded too).

    \b
    Example:
        opsledger incident verify INC-0001 --suite postgresql --as bob
    """
    from opsledger.faults.resolution import recovery_test
    from opsledger.records import Verified

    result = recovery_test(
        find_project(), incident_id, person=person, suites=suites, signing_key=signing_key
    )
    outcome = result.extra
    _done(
        result,
        f"recovery test {outcome['result']} ({outcome['passed']} passed, "
        f"{outcome['failed']} failed)",
    )
    for failure in outcome["failures"]:
        click.secho(f"  FAILED {failure}", fg="red")
    if outcome["result"] != Verified.PASSED:
        raise SystemExit(EXIT_FAILED)


@incident.command()
@click.argument("incident_id")
@click.option("--change", help="The change that fixed it (needs its successful, verified run).")
@click.option("--recovery-test", is_flag=True, help="Resolved by the recorded recovery test.")
@click.option("--summary", required=True, help="What restored the service.")
@person_option
@signing_key_option
def resolve(incident_id, change, recovery_test, summary, person, signing_key) -> None:
    """Resolve an incident with proof: the fix's verified run, or a passing recovery test.

    Exit 3 (nothing written) when the change has no successful, verified run on the affected
    hosts after the fault was detected, or no passing recovery test follows the last sighting.

    \b
    Example:
        opsledger incident resolve INC-0001 --change CHG-0007 \\
          --summary "PostgreSQL restarted by the emergency change" --as alice
    """
    from opsledger.faults.resolution import resolve as resolve_incident

    result = resolve_incident(
        find_project(),
        incident_id,
        person=person,
        summary=summary,
        change=change,
        recovery_test=recovery_test,
        signing_key=signing_key,
    )
    _done(result, "resolved " + (f"by {change}" if change else "after the recovery test"))


@incident.command()
@click.argument("incident_id")
@click.option("--reason", required=True, help="What still fails, and who says so.")
@person_option
@signing_key_option
def reopen(incident_id, reason, person, signing_key) -> None:
    """Reopen a resolved incident that is not fixed; resolving again needs new proof.

    The resolution clock resumes (the time it stood resolved is not counted). A closed
    incident is not reopened: a fault that returns is a new incident, marked as a repeat.

    \b
    Example:
        opsledger incident reopen INC-0001 --reason "Orders still time out for EU users" --as alice
    """
    from opsledger.faults.resolution import reopen as reopen_incident

    result = reopen_incident(
        find_project(), incident_id, person=person, reason=reason, signing_key=signing_key
    )
    _done(result, f"reopened by {person}")


@incident.command()
@click.argument("incident_id")
@click.option("--cause", required=True, help="What caused it.")
@click.option("--class", "klass", required=True, help="The fault class, confirmed or corrected.")
@click.option("--root-cause", default="", help="Root-cause summary (required for P1/P2).")
@person_option
@signing_key_option
def close(incident_id, cause, klass, root_cause, person, signing_key) -> None:
    """Close a resolved incident with its cause, its class confirmed, and a root cause (P1/P2).

    \b
    Example:
        opsledger incident close INC-0001 --class software --cause "PostgreSQL stopped by hand" \\
          --root-cause "Maintenance on the wrong host; prompts now show the role" --as alice
    """
    from opsledger.faults.resolution import close as close_incident

    result = close_incident(
        find_project(),
        incident_id,
        person=person,
        cause=cause,
        klass=klass,
        root_cause=root_cause,
        signing_key=signing_key,
    )
    _done(result, f"closed ({klass})")


@incident.command()
@click.argument("incident_id")
@output_option("text", "json", help="json: the incident, its clocks and steps.")
def show(incident_id, fmt) -> None:
    """Show an incident: priority, clocks (due, used, met), every step dated by git.

    \b
    Example:
        opsledger incident show INC-0001
    """
    from opsledger.faults.queries import show_incident
    from opsledger.views.faults import incident_json, incident_text

    view = show_incident(find_project(), incident_id)
    click.echo(incident_json(view) if fmt == "json" else incident_text(view), nl=False)


@incident.command("list")
@click.option("--env", "environment", help="Only this environment.")
@click.option(
    "--status", type=click.Choice(["open", "acknowledged", "resolved", "closed"]), default=None
)
@click.option(
    "--breaching", is_flag=True, help="Only incidents past an SLA target (exit 1 if any)."
)
@click.option(
    "--due",
    is_flag=False,
    flag_value="24h",
    default=None,
    type=DurationType(),
    help="Only active incidents due within this time (default 24h), soonest first.",
)
@output_option("text", "json")
def list_(environment, status, breaching, due, fmt) -> None:
    """Incidents with priority, status and SLA state; newest first, or by deadline with --due.

    An incident file that does not read is never skipped in silence: the others are listed
    (during an outage the on-call still needs them), each unreadable file gets an `error:` line
    naming it and the fix, and the exit code is 2 — its clock cannot be judged, so neither "no
    breach" nor a complete list may be claimed.

    \b
    Example:
        opsledger incident list --due 4h --env production
    """
    from opsledger.faults.queries import list_incidents
    from opsledger.views.faults import list_rows

    now = dt.datetime.now(dt.UTC)
    found = list_incidents(
        find_project(),
        environment=environment,
        status=status,
        breaching=breaching,
        due_within=due,
        now=now,
    )
    for problem in found.problems:
        click.secho(f"error: {problem}", fg="red", err=True)
    rows = list_rows(found, now)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        columns = (
            "incident",
            "priority",
            "status",
            "class",
            "env",
            "assignee",
            "sla",
            "left",
            "title",
        )
        table = Table(*columns, title=f"{len(rows)} incident(s)")
        for row in rows:
            table.add_row(*(escape(row[c]) for c in columns))
        console(minimum=140).print(table)
    if found.problems:
        raise SystemExit(EXIT_INVALID)
    if breaching and rows:
        raise SystemExit(EXIT_FAILED)


@incident.command("schema")
def schema_() -> None:
    """Print the JSON Schema of incident.yml.

    \b
    Example:
        opsledger incident schema > incident.schema.json
    """
    text = resources.files("opsledger.schemas").joinpath("incident.schema.json").read_text()
    click.echo(json.dumps(json.loads(text), indent=2))
