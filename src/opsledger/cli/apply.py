"""`opsledger apply`: run approved changes safely and commit the evidence."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import click

from opsledger.cli.options import TIME, base_option, output_option, verbosity_option, wait_duration
from opsledger.cli.progress import JsonEvents, LiveProgress
from opsledger.errors import EXIT_FAILED, EXIT_INVALID, EXIT_LOCKED, OpsledgerError, Problem
from opsledger.project import find_project

EXIT_CANCELED = 130  # like a shell's Ctrl-C


def _describe(result) -> dict:
    return {
        "change": result.change_id,
        "result": result.result,
        "record": str(result.record_path),
        "committed": result.committed,
        "commit": result.commit or None,
        "commit_problem": str(result.commit_problem) if result.commit_problem else None,
        "verification": result.record.verification.get("status"),
        "rollback": result.record.rollback,
        "review": str(result.review_path) if result.review_path else None,
        "stale_locks": result.stale_locks,
    }


def _exit_code(result) -> int:
    if result.result == "canceled":
        return EXIT_CANCELED
    # A run whose record git refused did not finish its job: the evidence is missing.
    return 0 if result.ok else EXIT_FAILED


def _summary(result) -> str:
    """One line: the result and where its record is (and whether git has it)."""
    where = result.record_path
    if result.committed:
        return (
            f"{result.change_id}: {result.result} — record {where.name}, "
            f"commit {result.commit[:10]}"
        )
    return (
        f"{result.change_id}: {result.result} — record {where} NOT COMMITTED: "
        f"{result.commit_problem}"
    )


@click.command()
@click.argument("change_id", required=False)
@click.option("--pending", is_flag=True, help="Apply every approved change not yet applied.")
@click.option("--env", "environment", help="With --pending: only changes of this environment.")
@click.option(
    "--wait",
    "wait",
    default="0s",
    type=wait_duration,
    help="How long to wait for held locks: a duration (10m) or seconds.",
)
@output_option("text", "json", help="json: one JSON object per event, then the result.")
@click.option(
    "--skip-verify", is_flag=True, help="Do not run the verification suites (recorded as skipped)."
)
@click.option("--again", is_flag=True, help="Run a change that already succeeded once more.")
@click.option("--at", "at", type=TIME, help="Judge the rules at this time (the lab only).")
@click.option(
    "--shard",
    "shard_spec",
    metavar="I/N",
    help="Run only shard I of N of each change (README, Scaling out); the last shard to "
    "report merges them into the change's run record.",
)
@verbosity_option
@base_option
def apply(
    change_id: str | None,
    pending: bool,
    environment: str | None,
    wait: dt.timedelta,
    fmt: str,
    skip_verify: bool,
    again: bool,
    at: dt.datetime | None,
    verbosity: int,
    base: str | None,
    shard_spec: str | None,
) -> None:
    """Decide now, lock the targets, run, verify, roll back on failure, commit the run record.

    Exit codes: 0 success; 1 failed, rolled back, or its record could not be committed (the
    path and the fix are printed; the next apply commits it); 2 invalid input (nothing run;
    e.g. --at outside the lab); 3 denied by policy, now or once the locks are held (nothing
    run); 4 a target is locked by another run (nothing run); 130 canceled (Ctrl-C or SIGTERM).
    With --pending, 1 also when a pending change can never run as it stands (window closed,
    failed content, freeze). A run that reads files outside the approved content fails.

    \b
    Example:
        opsledger apply CHG-0001
        opsledger apply --pending --wait 10m --json     # in CI after a merge
        opsledger apply CHG-0001 --shard 2/3            # one of three runners
    """
    from opsledger.apply import apply_change
    from opsledger.pending import apply_pending
    from opsledger.sharded import shard_runner
    from opsledger.shards import Shard

    if bool(change_id) == pending:
        raise OpsledgerError(
            Problem(
                "give a change id or --pending (not both)",
                field="CHANGE_ID",
                fix="e.g. opsledger apply CHG-0001",
            ),
            EXIT_INVALID,
        )
    shard = Shard.parse(shard_spec) if shard_spec is not None else None
    project = find_project()
    now, as_json = at, fmt == "json"
    progress = JsonEvents() if as_json else LiveProgress()
    view = contextlib.nullcontext() if as_json else progress
    if change_id:
        with view:
            run = apply_change if shard is None else shard_runner(shard)
            try:
                result = run(
                    project,
                    change_id,
                    now=now,
                    wait=wait.total_seconds(),
                    skip_verify=skip_verify,
                    again=again,
                    events=progress,
                    base=base,
                    verbosity=verbosity,
                )
            except OpsledgerError as err:
                if err.exit_code != EXIT_LOCKED or err.problems[0].field != "shard":
                    raise
                click.echo(f"{change_id}: {err.problems[0].message}: nothing to do here")
                raise SystemExit(0) from None
        if as_json:
            click.echo(json.dumps({"event": "result", **_describe(result)}, default=str))
        else:
            click.echo(_summary(result))
            if result.review_path:
                click.echo(f"post-implementation review due: {result.review_path}")
        raise SystemExit(_exit_code(result))
    with view:
        outcome = apply_pending(
            project,
            now=now,
            wait=wait.total_seconds(),
            skip_verify=skip_verify,
            events=progress,
            environment=environment,
            base=base,
            verbosity=verbosity,
            run_change=apply_change if shard is None else shard_runner(shard),
        )
    for item in outcome.items:
        if as_json:
            line = {
                "event": "pending",
                "change": item.change_id,
                "action": item.action,
                "why": item.why,
            }
            if item.result:
                line.update(_describe(item.result))
            click.echo(json.dumps(line, default=str))
        else:
            click.echo(f"{item.change_id}: {item.action} — {item.why}")
    if not outcome.items:
        click.echo(
            "nothing pending" if not as_json else json.dumps({"event": "pending", "items": 0})
        )
    for item in outcome.applied:
        if not item.committed and not as_json:
            click.echo(_summary(item))
    worst = max((_exit_code(r) for r in outcome.applied), default=0)
    if outcome.stuck:
        worst = max(worst, EXIT_FAILED)
        if not as_json:
            click.secho(
                f"error: {len(outcome.stuck)} pending change(s) can never run as they stand: "
                + ", ".join(i.change_id for i in outcome.stuck),
                fg="red",
                err=True,
            )
    raise SystemExit(worst)
