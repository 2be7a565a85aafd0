"""The root command group: the table of commands, loading each on first use, and user errors.

No logic lives here. Every command's docstring is its help text and carries an Example.
User errors (OpsledgerError) print one line per problem to stderr and exit with their code.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import click

from opsledger import __version__
from opsledger.cli.history import check_history
from opsledger.cli.roothelp import ENV_OPTIONS
from opsledger.errors import (
    EXIT_DENIED,
    EXIT_INVALID,
    OpsledgerError,
    Problem,
    is_utf8,
    one_line,
    shown,
)


def not_utf8_problems(args: list[str]) -> list[Problem]:
    """One problem per argument (or option variable) whose bytes are not UTF-8.

    Python hands such bytes over as lone surrogates: written into a change, a statement or an
    incident they become YAML no loader accepts back, so an approval would be committed that
    never counts and an incident that can no longer be read. Refused before anything runs.
    """
    named = [(f"argument {index}", arg) for index, arg in enumerate(args, 1)]
    named += [(f"${name}", os.environ[name]) for name in ENV_OPTIONS if name in os.environ]
    return [
        Problem(
            f"{shown(value, 60)} is not UTF-8 text",
            None,
            where,
            "pass UTF-8 text (check the terminal's or the script's encoding)",
        )
        for where, value in named
        if not is_utf8(value)
    ]


# Every command of the root group: name -> (module under opsledger.cli, its first help paragraph).
# A command's module is imported only when that command runs (or its own --help is asked for):
# the modules pull in jsonschema, rich, Ansible and most of the library, which `opsledger
# --help` and most single commands never need. The root --help prints these texts as click
# would from the commands themselves; tests/unit/test_cli.py checks them against the commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "alerts": (
        "alerts",
        "Alerts from Prometheus and Alertmanager become incidents (and are resolved by evidence).",
    ),
    "apply": (
        "apply",
        "Decide now, lock the targets, run, verify, roll back on failure, commit the run record.",
    ),
    "approve": (
        "approve",
        "Approve (or reject) a change's current content and commit it as you, signed with --key.",
    ),
    "audit": ("audit", "Read git history as the change log."),
    "calendar": (
        "calendar",
        "The change calendar: maintenance windows, freezes, scheduled changes, due drills.",
    ),
    "change": ("change", "Create and validate change requests."),
    "ci": (
        "ci",
        "Pipeline steps: check a pull request, apply after a merge, generate CODEOWNERS.",
    ),
    "decide": (
        "decide",
        "Evaluate every rule for a change; exit 0 when allowed, 3 when denied.",
    ),
    "drift": (
        "drift",
        "Compare hosts with the desired state in git (converge in check mode with diff).",
    ),
    "drill": (
        "drill",
        "Drill a service's disaster recovery (policies/dr.yml) and measure RTO and RPO.",
    ),
    "host": (
        "host",
        "Each host's record from git: changes, patches, findings, drills, incidents, waivers.",
    ),
    "incident": (
        "incident",
        "Record, handle and close incidents; SLA clocks run on git time.",
    ),
    "inspect": (
        "inspect",
        "Run an inspection schedule's checks on every host in parallel (read-only).",
    ),
    "lab": (
        "lab",
        "Run the local lab: the hosts of inventories/lab as podman systemd containers.",
    ),
    "notify": (
        "notify",
        "Notifications to the team's channels (Slack, Teams, Matrix, e-mail, webhooks).",
    ),
    "plan": (
        "plan",
        "Decide, then show per host what the change would do (check mode with diff).",
    ),
    "policy": (
        "policy",
        "Check, propose and print the schemas of the policies (people, rules, windows, SLA, ...).",
    ),
    "problem": (
        "problem",
        "Problems: the cause behind recurring incidents, the known error, the permanent fix.",
    ),
    "report": ("report", "KPIs of changes, operations and incidents, as one page."),
    "roles": ("roles", "Role documentation and consistency checks."),
    "runbook": ("runbook", "List and describe runbooks (runbooks/<name>/runbook.yml)."),
    "verify": (
        "verify",
        "Verify hosts against the inventory with the Testinfra suites in tests/infra.",
    ),
}


class _Group(click.Group):
    """A group that turns OpsledgerError into one line per problem and the right exit code.

    Click's own usage errors (a missing option, a value out of range) become one `error:` line
    with exit 2 too, instead of a usage block: pipelines read errors line by line.

    Its commands (COMMANDS) load on first use, each wrapped by the history check as it loads
    (cli/history.py): start-up pays only for the command that runs.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"opsledger.cli.{COMMANDS[cmd_name][0]}")
            command = getattr(module, cmd_name)
            check_history(command, (cmd_name,))
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # click suggests from the loaded ones only
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' one-line help from COMMANDS, without loading a command's module."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        # A refused command writes nothing, its caches included: held until it ends well.
        from opsledger.localcache import hold_writes

        _escape_unencodable_output()
        with hold_writes() as discard:
            try:
                return super().invoke(ctx)
            except OpsledgerError as exc:
                discard()
                self._refuse(ctx, exc)
            except click.exceptions.Exit as exc:
                if exc.exit_code in REFUSED:
                    discard()
                raise
            except SystemExit as exc:
                if exc.code in REFUSED:
                    discard()
                raise
            except BaseException:
                discard()
                raise

    @staticmethod
    def _refuse(ctx: click.Context, exc: OpsledgerError) -> None:
        # A refusal always says why: an empty list would be an exit code with no reason.
        problems = exc.problems or [Problem("refused without a reason (a bug: report it)")]
        # One line per problem: loaders that meet the same fault (each policy file through
        # one symlinked policies/) say it once.
        for line in dict.fromkeys(str(problem) for problem in problems):
            click.secho(f"error: {line}", fg="red", err=True)
        ctx.exit(exc.exit_code)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        if problems := not_utf8_problems(sys.argv[1:] if args is None else list(args)):
            for problem in problems:
                click.secho(f"error: {problem}", fg="red", err=True)
            sys.exit(EXIT_INVALID)
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


REFUSED = (EXIT_INVALID, EXIT_DENIED)  # bad input, a policy denial: nothing written


def _escape_unencodable_output() -> None:
    """Print what the terminal cannot encode as a backslash escape, never crash on it.

    A file name that is not UTF-8 reaches opsledger from git as raw bytes, kept as lone
    surrogates (surrogateescape) so it can be judged; a finding or a listing that names it
    must still print (`changes/CHG-0001/runs/\\udcff.json`), not end in a traceback.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


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
    One grammar on every command (README, Conventions):
      --format text|json|...   what a command prints; --json is --format json
      a time                   2026-12-24T18:00+01:00 (or ...Z), now, +2h, -30m
      a duration               90s, 15m, 2h, 1d, 1h30m, PT1H30M

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
      OPSLEDGER_RUNNER         the CI job an origin lock names (default from the
                               GitHub/GitLab job variables)
      OPSLEDGER_VERIFY_WORKERS pytest processes verifying hosts at once (default the
                               CPU count)
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


def main() -> None:
    cli(prog_name="opsledger")


def render_root_help() -> str:
    """What click prints for `opsledger --help` at 80 columns or more.

    click wraps help at the terminal's columns capped at 80, less 2: 78.
    """
    ctx = click.Context(cli, info_name="opsledger", terminal_width=78, **cli.context_settings)
    return cli.get_help(ctx) + "\n"


def write_root_help() -> None:  # pragma: no cover - the maintainer's regeneration
    """Rewrite roothelp.ROOT_HELP from the commands (one line of help per line of source)."""
    import json
    from pathlib import Path

    from opsledger.cli import roothelp

    mark = "# Written by write_root_help()"
    path = Path(roothelp.__file__)
    head = path.read_text().rpartition(mark)[0]
    lines = "".join(f"    {json.dumps(line)}\n" for line in render_root_help().splitlines(True))
    path.write_text(f"{head}{mark}: do not edit.\nROOT_HELP = (\n{lines})\n")
