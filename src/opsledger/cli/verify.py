"""`opsledger verify`: prove hosts match their desired state (Testinfra suites)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from opsledger.cli.options import output_option
from opsledger.cli.output import console
from opsledger.errors import EXIT_FAILED
from opsledger.project import find_project


@click.command()
@click.option(
    "--env",
    "environment",
    default="lab",
    show_default=True,
    help="Environment (inventories/<env>).",
)
@click.option("--targets", default="all", show_default=True, help="Ansible host pattern.")
@click.option("--suite", "suites", multiple=True, help="Suite (role) to run; repeatable.")
@output_option("text", "json", help="json: every outcome.")
def verify(environment: str, targets: str, suites: tuple[str, ...], fmt: str) -> None:
    """Verify hosts against the inventory with the Testinfra suites in tests/infra.

    Exits 0 when every test passed (skips are waived controls), 1 otherwise.

    \b
    Example:
        opsledger verify --env lab --targets db --suite postgresql
    """
    from opsledger.records import Verified
    from opsledger.verify import verify as run_verify

    result = run_verify(find_project(), environment=environment, targets=targets, suites=suites)
    if fmt == "json":
        click.echo(json.dumps({**asdict(result), "output": None, "ok": result.ok}, indent=2))
    else:
        hosts = sorted({o.host for o in result.outcomes})
        table = Table(
            "host",
            "passed",
            "failed",
            "skipped (waived / not applicable)",
            title=f"verify {environment}:{targets}",
        )
        for host in hosts:
            mine = [o for o in result.outcomes if o.host == host]
            table.add_row(
                host,
                str(sum(o.status == Verified.PASSED for o in mine)),
                str(sum(o.status in (Verified.FAILED, Verified.ERROR) for o in mine)),
                str(sum(o.status == Verified.SKIPPED for o in mine)),
            )
        console().print(table)
        for failure in result.failures:
            click.secho(f"FAILED {failure.host}: {failure.test}: {failure.message}", fg="red")
        click.echo(
            f"{result.count('passed')} passed, {len(result.failures)} failed, "
            f"{result.count('skipped')} skipped in {result.duration_s}s"
        )
    if not result.ok:
        raise SystemExit(EXIT_FAILED)
