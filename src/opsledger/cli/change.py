"""`opsledger change ...`: create and validate change requests (changes/<block>/<ID>/change.yml)."""

from __future__ import annotations

import datetime as dt
import json
import re
from importlib import resources
from pathlib import Path

import click

from opsledger.cli.options import (
    TIME,
    DurationType,
    output_option,
    person_option,
    signing_key_option,
)
from opsledger.errors import EXIT_INVALID, OpsledgerError, Problem, shown
from opsledger.project import find_project
from opsledger.yamlio import parse_yaml

# A change window is hours; a month is already generous.
WINDOW = DurationType(dt.timedelta(minutes=1), dt.timedelta(days=31))


def _params(pairs: tuple[str, ...]) -> dict:
    """--param key=value pairs; values read as YAML with the project's one safe loader."""
    params: dict = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            problems.append(
                Problem(
                    f"{shown(pair, 40)} is not name=value",
                    field="--param",
                    fix="write e.g. --param tags='[postgresql]' (names: letters, digits, _)",
                )
            )
        elif key in params:
            problems.append(
                Problem(f"{key} is given twice", field="--param", fix="give each param once")
            )
        else:
            try:
                params[key] = parse_yaml(value, source=f"--param {key}", dates=False)
            except OpsledgerError as exc:
                problems += exc.problems
    if problems:
        raise OpsledgerError(problems)
    return params


@click.group()
def change() -> None:
    """Create and validate change requests.

    \b
    Example:
        opsledger change validate --all
    """


@change.command()
@click.option("--title", required=True, help="One line saying what changes.")
@click.option("--runbook", required=True, help="Runbook to run (opsledger runbook list).")
@click.option(
    "--type",
    "change_type",
    default="normal",
    show_default=True,
    type=click.Choice(["standard", "normal", "emergency"]),
)
@click.option("--env", "environment", default="lab", show_default=True)
@click.option("--targets", default="all", show_default=True, help="Ansible host pattern.")
@click.option("--param", "params", multiple=True, help="key=value (value read as YAML).")
@click.option(
    "--impact", default="low", show_default=True, type=click.Choice(["low", "medium", "high"])
)
@click.option(
    "--urgency", default="low", show_default=True, type=click.Choice(["low", "medium", "high"])
)
@click.option(
    "--start",
    type=TIME,
    help="Window start, a time such as 2026-12-24T18:00+01:00 or +2h (default: now, or the "
    "next maintenance window of --env when now is outside them).",
)
@click.option(
    "--duration",
    default="2h",
    show_default=True,
    type=WINDOW,
    help="Window length: 90m, 2h, 1h30m.",
)
@click.option(
    "--requested-by",
    envvar="OPSLEDGER_PERSON",
    required=True,
    show_envvar=True,
    help="Your person id in policies/people.yml; set OPSLEDGER_PERSON to stop typing it.",
)
@click.option("--reason", required=True, help="Why the change is needed.")
@click.option("--rollback", help="Rollback runbook (default: the runbook's own).")
@click.option(
    "--risk",
    type=click.Choice(["low", "medium", "high"]),
    help="Raise the runbook's risk for this change (high needs the CAB).",
)
@signing_key_option
def new(
    title,
    runbook,
    change_type,
    environment,
    targets,
    params,
    impact,
    urgency,
    start,
    duration,
    requested_by,
    reason,
    rollback,
    risk,
    signing_key,
) -> None:
    """Write changes/<block>/<next id>/change.yml and your request; commit both yourself.

    The request statement (changes/<block>/<ID>/approvals/<you>/<time>.yml) says you request the
    change's content as it is now, signed with --key; commit it with the change and the
    desired-state edits. After amending the change, `opsledger change submit` it again.
    Nothing is written when the change would be invalid.

    \b
    Example:
        opsledger change new --title "Raise work_mem on db" --runbook converge \\
          --targets db --param tags='[postgresql]' --requested-by alice \\
          --reason "Sorts spill to disk during the nightly report"
    """
    from opsledger.nextsteps import after_request
    from opsledger.signoff import request_change

    begin = start.replace(microsecond=0) if start else None
    length, values = duration, _params(params)
    project = find_project()
    result, statement = request_change(
        project,
        signing_key=signing_key,
        title=title,
        runbook=runbook,
        requested_by=requested_by,
        reason=reason,
        change_type=change_type,
        environment=environment,
        targets=targets,
        params=values,
        impact=impact,
        urgency=urgency,
        window_start=begin,
        window_end=begin + length if begin else None,
        window_length=length,
        check_policy=True,
        rollback=rollback,
        risk=risk,
    )
    signed = "signed" if statement.signed else "unsigned"
    click.echo(f"{result.id}: wrote {result.file} and {statement.path} ({signed})")
    if result.note:
        click.echo(result.note)
    for step in after_request(project, result.id):
        click.echo(f"next: {step}")
    from opsledger.policy.effect import policy_gap

    gap = policy_gap(project)
    if gap:
        click.echo(f"note: {gap}")


@change.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Validate every change request.")
def validate(ids: tuple[str, ...], all_: bool) -> None:
    """Check change requests: schema, window, runbook, params, type, targets.

    Prints one line per problem (file, field, fix) and exits 2 when any change is invalid.

    \b
    Example:
        opsledger change validate CHG-0001
    """
    from opsledger.changes import change_ids, validate_change
    from opsledger.prechecks import change_problems

    project = find_project()
    if all_ == bool(ids):
        raise OpsledgerError(
            Problem(
                "name change ids or pass --all (not both)",
                fix="e.g. opsledger change validate CHG-0001",
            )
        )
    invalid = 0
    for change_id in change_ids(project) if all_ else ids:
        try:
            result = validate_change(project, change_id)
        except OpsledgerError as exc:
            problems = exc.problems
        else:
            problems = result.problems or change_problems(project, result)
        if problems:
            invalid += 1
            for problem in problems:
                click.secho(f"error: {problem}", fg="red", err=True)
        else:
            click.echo(
                f"{change_id}: valid ({result.runbook.name} on "
                f"{len(result.hosts)} host(s) of {result.change.environment})"
            )
    if invalid:
        raise SystemExit(EXIT_INVALID)


@change.command()
@click.argument("change_id")
@person_option
@signing_key_option
def submit(change_id: str, person: str, signing_key: Path | None) -> None:
    """State, as the requester, that you request the change's current content; commit it.

    Needed after any edit of the change's content (the change, its runbook, roles, inventory):
    approvals name the content they approve, and so does the request.

    \b
    Example:
        opsledger change submit CHG-0001 --as alice --key ~/.ssh/id_ed25519
    """
    from opsledger.signoff import submit_change

    result = submit_change(find_project(), change_id, person=person, signing_key=signing_key)
    signed = "signed" if result.signed else "unsigned"
    click.echo(
        f"{change_id} requested by {person} ({signed}): content {result.content_sha256[:12]}, "
        f"commit {result.commit[:10]}"
    )


@change.command("schema")
def schema_() -> None:
    """Print the JSON Schema of change.yml (for editors and other tools).

    \b
    Example:
        opsledger change schema > change.schema.json
    """
    text = resources.files("opsledger.schemas").joinpath("change.schema.json").read_text()
    click.echo(json.dumps(json.loads(text), indent=2))


@change.command()
@click.argument("change_id")
@person_option
@click.option("--summary", required=True, help="What happened and what the change did.")
@click.option("--cause", required=True, help="Why the emergency change was needed.")
@click.option("--action", "actions", multiple=True, help="A follow-up action (repeatable).")
@signing_key_option
def review(
    change_id: str,
    person: str,
    summary: str,
    cause: str,
    actions: tuple[str, ...],
    signing_key: Path | None,
) -> None:
    """Complete an emergency change's post-implementation review and commit it as you.

    apply creates changes/<block>/<ID>/review.yml when an emergency change runs; it is due within
    the policy's emergency.review_within_hours.

    \b
    Example:
        opsledger change review CHG-0007 --as carol --summary "Restart cleared the leak" \\
          --cause "Connection leak in the reporting job" --action "Fix the job's pool"
    """
    from opsledger.reviews import complete_review

    done = complete_review(
        find_project(),
        change_id,
        person=person,
        summary=summary,
        cause=cause,
        actions=list(actions),
        signing_key=signing_key,
    )
    late = " (late)" if done.late(done.reviewed_at or dt.datetime.now(dt.UTC)) else ""
    click.echo(f"{change_id}: reviewed by {person}{late}, due by {done.due_by.isoformat()}")


@change.command()
@click.argument("change_id")
@person_option
@click.option("--reason", required=True, help="Why the change is withdrawn.")
@signing_key_option
def withdraw(change_id: str, person: str, reason: str, signing_key: Path | None) -> None:
    """Withdraw a change that has not run successfully; it never runs and holds no host.

    Writes changes/<block>/<ID>/withdrawn.yml (who, when, why) and commits it as you. The
    folder stays and its id is never reused. `opsledger change cancel` is the same command.

    \b
    Example:
        opsledger change withdraw CHG-0004 --as alice --reason "Superseded by CHG-0006"
    """
    from opsledger.changes import withdraw_change

    done = withdraw_change(
        find_project(), change_id, person=person, reason=reason, signing_key=signing_key
    )
    click.echo(f"{change_id}: withdrawn by {done.person} at {done.at} ({done.path.name} committed)")


change.add_command(withdraw, "cancel")


@change.command()
@click.argument("change_id")
@output_option("text", "json", help="json: the change and its runs (with --log: the log).")
@click.option(
    "--log",
    "with_log",
    is_flag=True,
    help="Every task of every run on every host, from the job logs kept with the records.",
)
@click.option("--run", "run", help="With --log: only the run that started at this stamp.")
def show(change_id: str, fmt: str, with_log: bool, run: str | None) -> None:
    """Show a change, its approvals, its run records and its review; --log: what ran where.

    \b
    Example:
        opsledger change show CHG-0001 --log
    """
    from opsledger.history import change_history

    as_json = fmt == "json"

    if with_log:
        from opsledger.joblog import read_job_log, render_log

        logs = read_job_log(find_project(), change_id, run)
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {"record": g.record, "log": g.log, "verified": g.verified,
                         "entries": g.entries}
                        for g in logs
                    ],
                    indent=2,
                )
            )  # fmt: skip
        else:
            click.echo(render_log(logs), nl=False)
        return
    history = change_history(find_project(), change_id)
    if as_json:
        click.echo(json.dumps(history.as_dict(), indent=2, default=str))
        return
    click.echo(history.render())


@change.command("migrate-layout")
@click.option("--dry-run", is_flag=True, help="List the moves; move and commit nothing.")
@output_option("text", "json", help="json: the moves and the commit.")
def migrate_layout(dry_run: bool, fmt: str) -> None:
    """Move every flat changes/<ID>/ into its id block changes/<KIND>-<block>/<ID>/, one commit.

    New changes already go to their block (CHG-0123 -> changes/CHG-01xx/CHG-0123/); this moves
    the legacy flat folders there with git mv, committed with your git identity. Same bytes:
    approvals, content hashes and run evidence stay valid. Refused (exit 2) on a dirty tree.
    Run twice, the second run moves nothing.

    \b
    Example:
        opsledger change migrate-layout --dry-run
    """
    from opsledger.migrate import migrate_layout as migrate

    done = migrate(find_project(), dry_run=dry_run)
    if fmt == "json":
        moves = [{"from": flat, "to": block} for flat, block in done.moves]
        click.echo(json.dumps({"moves": moves, "commit": done.commit, "dry_run": dry_run}))
        return
    if not done.moves:
        click.echo("nothing to move: every change folder is in its block")
        return
    if dry_run:
        click.echo("\n".join(f"{flat} -> {block}" for flat, block in done.moves))
        click.echo(f"{len(done.moves)} change folders would move (dry run: nothing moved)")
        return
    click.echo(f"{len(done.moves)} change folders moved into their blocks in {done.commit[:10]}")
