"""`opsledger drill`: a disaster-recovery drill of one service, measured against its objectives."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import click

from opsledger.cli.change import _params
from opsledger.cli.options import one_or_due, output_option, wait_duration
from opsledger.cli.progress import JsonEvents, LiveProgress
from opsledger.drill import DrillResult
from opsledger.project import find_project


@click.command()
@click.argument("service", required=False)
@click.option("--env", "environment", default=None, help="Environment (default lab).")
@click.option("--due", is_flag=True, help="Drill every service whose drill is overdue.")
@click.option("--param", "params", multiple=True, help="Runbook parameter, key=value (YAML).")
@click.option(
    "--wait",
    type=wait_duration,
    default="0s",
    help="How long to wait for busy targets' locks: a duration (10m) or seconds.",
)
@output_option("text", "json", help="json: events as JSON lines, then the result.")
def drill(
    service: str | None,
    environment: str | None,
    due: bool,
    params: tuple[str, ...],
    wait: dt.timedelta,
    fmt: str,
) -> None:
    """Drill a service's disaster recovery (policies/dr.yml) and measure RTO and RPO.

    Runs the service's drill runbook on its targets: a verified backup and working WAL
    archiving first (or nothing is touched), marker writes, the disaster, the restore, the dr
    verification suite; then compares RTO and RPO with the objectives. The drill is recorded
    under records/drills/ and committed, passed or not. Exit 0 passed, 1 failed or an
    objective missed, 3 when the environment needs a change for drills, 4 when targets are
    locked. With --due (for a daily schedule): every service whose last passing drill is older
    than its drill_every is drilled, on the environments where it may run directly.

    \b
    Example:
        opsledger drill postgres --env lab
        opsledger drill postgres --env lab --param marker_seconds=120
        opsledger drill --due
    """
    from opsledger.drill import drill as run_drill
    from opsledger.drill import run_due_drills

    one_or_due(service, due, "SERVICE", "opsledger drill postgres --env lab")
    as_json = fmt == "json"
    progress = JsonEvents() if as_json else LiveProgress()
    view = contextlib.nullcontext() if as_json else progress
    if due:
        with view:
            found = run_due_drills(find_project(), environment=environment, events=progress)
        for state in found.not_due:
            click.echo(
                f"{state.service} on {state.environment}: not due (last passed drill "
                f"{state.days_since:.0f} days ago)"
            )
        for result in found.ran:
            _show(result, as_json)
        if not found.ran:
            click.echo("no drill due")
        raise SystemExit(0 if found.ok else 1)
    with view:
        result = run_drill(
            find_project(),
            service,
            environment=environment or "lab",
            params=_params(params),
            wait=wait.total_seconds(),
            events=progress,
        )
    _show(result, as_json)
    raise SystemExit(0 if result.passed else 1)


def _show(result: DrillResult, as_json: bool) -> None:
    service, environment = result.service.name, result.environment
    m = result.measurement
    if as_json:
        click.echo(
            json.dumps(
                {
                    "event": "drill",
                    "service": service,
                    "environment": environment,
                    "passed": result.passed,
                    "reasons": result.reasons,
                    "measurements": result.record.measurements if result.record else {},
                    "record": str(result.record_path or ""),
                    "commit": result.commit,
                    "incidents": result.incidents,
                }
            )
        )
    else:
        if m is not None:
            for entry in m.timeline:
                click.echo(f"  {entry['at']}  {entry['event']}")
            rto = "not measured" if m.rto_s is None else f"{m.rto_s:.1f}s"
            rpo = "not measured" if m.rpo_s is None else f"{m.rpo_s:.1f}s"
            click.echo(f"RTO {rto} (objective {result.service.rto_s:.0f}s)")
            click.echo(
                f"RPO {rpo} (objective {result.service.rpo_s:.0f}s); markers acknowledged "
                f"{m.acknowledged}, restored {m.restored}, lost {m.lost}"
            )
        for reason in result.reasons:
            click.echo(f"✗ {reason}")
        click.echo(f"drill {service} on {environment}: {'passed' if result.passed else 'FAILED'}")
        if result.record_path:
            click.echo(f"recorded {result.record_path.name} in {(result.commit or '')[:10]}")
        if result.incidents:
            click.echo(result.incidents)
