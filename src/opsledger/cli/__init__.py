"""The `opsledger` command line: parses arguments, calls the library, prints results.

No logic lives here. Every command's docstring is its help text and carries an Example.
User errors (OpsledgerError) print one line per problem to stderr and exit with their code.
"""

from __future__ import annotations

import os
import sys

import click

from opsledger import __version__
from opsledger.cli.apply import apply
from opsledger.cli.audit import audit
from opsledger.cli.calendar import calendar
from opsledger.cli.change import change
from opsledger.cli.ci import ci
from opsledger.cli.decide import approve, decide, plan
from opsledger.cli.drift import drift
from opsledger.cli.drill import drill
from opsledger.cli.history import check_history
from opsledger.cli.host import host
from opsledger.cli.incident import incident
from opsledger.cli.inspect import inspect
from opsledger.cli.lab import lab
from opsledger.cli.notify import notify
from opsledger.cli.policy import policy
from opsledger.cli.problem import problem
from opsledger.cli.report import report
from opsledger.cli.roles import roles
from opsledger.cli.runbook import runbook
from opsledger.cli.verify import verify
from opsledger.errors import OpsledgerError, one_line


class _Group(click.Group):
    """A group that turns OpsledgerError into one line per problem and the right exit code.

    Click's own usage errors (a missing option, a value out of range) become one `error:` line
    with exit 2 too, instead of a usage block: pipelines read errors line by line.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OpsledgerError as exc:
            for problem in exc.problems:
                click.secho(f"error: {problem}", fg="red", err=True)
            ctx.exit(exc.exit_code)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
            click.secho(f"error: {one_line(exc.format_message(), 300)}{hint}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="opsledger")
@click.option(
    "--no-color",
    is_flag=True,
    help="No colour in opsledger's or Ansible's output (or set NO_COLOR).",
)
@click.pass_context
def cli(ctx: click.Context, no_color: bool) -> None:
    """GitOps for IT operations: desired state, changes, approvals and audit in plain git.

    \b
    Example:
        opsledger lab up

    \b
    Environment (each stands for an option or a default):
      OPSLEDGER_PROJECT        the project root, when not run from inside it
      OPSLEDGER_PERSON         your person id: --as, --requested-by
      OPSLEDGER_SIGNING_KEY    the SSH key that signs your statements (--key) and evidence
      OPSLEDGER_BASE           the protected branch (default main) whose policies decide:
                               --base of decide, plan and apply; approve, change new,
                               change show and their next steps follow it too
      OPSLEDGER_COMMITTER_NAME, OPSLEDGER_COMMITTER_EMAIL
                               who commits run records and evidence (CI's identity;
                               default git's user)
      OPSLEDGER_LOCK_DIR       the machine's lock folder (default /run/lock/opsledger)
      OPSLEDGER_NO_INCIDENTS   1: inspections, drift, apply and drills open no incidents
      OPSLEDGER_DEBIAN_MIRROR, OPSLEDGER_DEBIAN_SECURITY_MIRROR
                               the Debian mirrors lab image and lab up build from
      NO_COLOR                 any value: --no-color
    """
    if no_color or os.environ.get("NO_COLOR"):  # any value, as no-color.org says
        ctx.color = False
        # rich reads NO_COLOR; ansible-playbook (and what it starts) reads ANSIBLE_NOCOLOR.
        os.environ["NO_COLOR"] = "1"
        os.environ["ANSIBLE_NOCOLOR"] = "1"


cli.add_command(apply)
cli.add_command(audit)
cli.add_command(calendar)
cli.add_command(approve)
cli.add_command(change)
cli.add_command(ci)
cli.add_command(decide)
cli.add_command(drift)
cli.add_command(drill)
cli.add_command(host)
cli.add_command(incident)
cli.add_command(inspect)
cli.add_command(lab)
cli.add_command(notify)
cli.add_command(plan)
cli.add_command(policy)
cli.add_command(problem)
cli.add_command(report)
cli.add_command(roles)
cli.add_command(runbook)
cli.add_command(verify)
check_history(cli)  # every command that reads git refuses to run without it (cli/history.py)


def main() -> None:
    cli(prog_name="opsledger")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
