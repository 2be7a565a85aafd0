"""`opsledger problem ...`: recurring incidents, their root cause, known error and fix."""

from __future__ import annotations

import json
from importlib import resources

import click

from opsledger.cli.options import output_option, person_option, signing_key_option
from opsledger.project import find_project


def _done(result, what: str) -> None:
    click.echo(
        f"{result.problem.id}: {what} — status {result.status.value}, commit {result.commit[:10]}"
    )


@click.group()
def problem() -> None:
    """Problems: the cause behind recurring incidents, the known error, the permanent fix.

    \b
    Example:
        opsledger problem suggest
    """


@problem.command("new")
@click.option("--title", required=True, help="One line naming the underlying fault.")
@click.option("--incident", "incidents", multiple=True, required=True, help="INC-... (repeatable).")
@click.option("--owner", help="Who drives it (default: you).")
@click.option("--root-cause", default="", help="The root cause, if known already.")
@person_option
@signing_key_option
def new(title, incidents, owner, root_cause, person, signing_key) -> None:
    """Open a problem for these incidents; each incident records the link, committed as you.

    \b
    Example:
        opsledger problem new --title "lab-db1 disk fills with WAL" --incident INC-0003 \\
          --incident INC-0007 --incident INC-0011 --as bob
    """
    from opsledger.faults.problems import open_problem

    result = open_problem(
        find_project(),
        title=title,
        incidents=incidents,
        person=person,
        owner=owner,
        root_cause=root_cause,
        signing_key=signing_key,
    )
    _done(result, f"opened for {', '.join(result.problem.incidents)}")


@problem.command()
@click.argument("problem_id")
@click.argument("incidents", nargs=-1, required=True)
@person_option
@signing_key_option
def link(problem_id, incidents, person, signing_key) -> None:
    """Add incidents (another occurrence of the same fault) to a problem.

    \b
    Example:
        opsledger problem link PRB-0001 INC-0014 --as bob
    """
    from opsledger.faults.problems import link_incidents

    result = link_incidents(
        find_project(), problem_id, incidents=incidents, person=person, signing_key=signing_key
    )
    _done(result, f"linked {', '.join(incidents)}")


@problem.command()
@click.option("--env", "environment", help="Only incidents of this environment.")
@output_option("text", "json")
def suggest(environment, fmt) -> None:
    """Recurring faults: the same fingerprint in N incidents within M days (policy thresholds).

    Prints the `problem new` (or `problem link`) command for each; writes nothing.

    \b
    Example:
        opsledger problem suggest --env production
    """
    from opsledger.faults.policy import load_fault_policy
    from opsledger.faults.problems import suggest_problems
    from opsledger.views.faults import suggestions_text

    project = find_project()
    found = suggest_problems(project, environment=environment)
    if fmt == "json":
        click.echo(json.dumps([s.__dict__ for s in found], indent=2))
        return
    policy = load_fault_policy(project)
    click.echo(suggestions_text(found, policy.problem_repeat, policy.problem_within.days), nl=False)


@problem.command("known-error")
@click.argument("problem_id")
@click.option("--root-cause", required=True, help="Why the incidents happen.")
@click.option("--workaround", required=True, help="How to restore service until it is fixed.")
@click.option("--runbook", help="The runbook that carries out the workaround.")
@person_option
@signing_key_option
def known_error_(problem_id, root_cause, workaround, runbook, person, signing_key) -> None:
    """Record the root cause and the workaround: the problem becomes a known error.

    \b
    Example:
        opsledger problem known-error PRB-0001 --root-cause "WAL piles up, archive full" \\
          --workaround "Run a full backup to expire old WAL" --runbook pg-backup --as bob
    """
    from opsledger.faults.problems import known_error

    result = known_error(
        find_project(),
        problem_id,
        person=person,
        root_cause=root_cause,
        workaround=workaround,
        runbook=runbook,
        signing_key=signing_key,
    )
    _done(result, "known error recorded")


@problem.command()
@click.argument("problem_id")
@click.option("--change", required=True, help="The change that removes the cause.")
@person_option
@signing_key_option
def fix(problem_id, change, person, signing_key) -> None:
    """Link the permanent fix (a change with a successful, verified run; exit 3 otherwise).

    \b
    Example:
        opsledger problem fix PRB-0001 --change CHG-0012 --as bob
    """
    from opsledger.faults.problems import record_fix

    result = record_fix(
        find_project(), problem_id, person=person, change=change, signing_key=signing_key
    )
    _done(result, f"fixed by {change}")


@problem.command()
@click.argument("problem_id")
@click.option("--summary", required=True, help="Why it can be closed.")
@person_option
@signing_key_option
def close(problem_id, summary, person, signing_key) -> None:
    """Close a fixed problem (or a known error accepted, saying why).

    \b
    Example:
        opsledger problem close PRB-0001 --summary "No recurrence in 30 days" --as carol
    """
    from opsledger.faults.problems import close_problem

    result = close_problem(
        find_project(), problem_id, person=person, summary=summary, signing_key=signing_key
    )
    _done(result, "closed")


@problem.command()
@click.argument("problem_id")
@output_option("text", "json", help="json: the problem's file, when it was opened, its age.")
def show(problem_id, fmt) -> None:
    """Show a problem: incidents, root cause, workaround, fix, timeline.

    \b
    Example:
        opsledger problem show PRB-0001
    """
    from opsledger.faults.problems import problem_views
    from opsledger.views.faults import problem_json, problem_text

    views = problem_views(find_project(), problem_id=problem_id)
    click.echo(problem_json(views[0]) if fmt == "json" else problem_text(views[0]), nl=False)


@problem.command("list")
@output_option("text", "json")
def list_(fmt) -> None:
    """Every problem with its status, incident count and age.

    \b
    Example:
        opsledger problem list
    """
    from opsledger.faults.problems import problem_views
    from opsledger.views.faults import problems_json, problems_text

    views = problem_views(find_project())
    click.echo(problems_json(views) if fmt == "json" else problems_text(views), nl=False)


@problem.command("schema")
def schema_() -> None:
    """Print the JSON Schema of problem.yml.

    \b
    Example:
        opsledger problem schema
    """
    text = resources.files("opsledger.schemas").joinpath("problem.schema.json").read_text()
    click.echo(json.dumps(json.loads(text), indent=2))
