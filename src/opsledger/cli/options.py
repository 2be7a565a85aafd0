"""Parsing of option values shared by several commands."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import click

from opsledger.errors import OpsledgerError, Problem, shown


def aware_time(text: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 date-time with a timezone, or None when the option was not given.

    Times without an offset are refused: a change window or a decision must mean the same
    instant on a laptop and in CI. An empty value (`--start ''`, often an unset shell
    variable) is refused too, not read as "not given": the default (now) is not what was meant.
    """
    if text is None:
        return None
    # Imported here: opsledger.changes pulls in jsonschema, and most commands load this module.
    from opsledger.changes import YEARS

    if not text.strip():
        raise OpsledgerError(
            Problem(
                "empty value",
                field=option,
                fix=f"give a date-time, e.g. {option} 2026-12-01T20:30:00+01:00, or leave "
                "the option out",
            )
        )
    try:
        moment = dt.datetime.fromisoformat(text)
        if not YEARS[0] <= moment.year <= YEARS[1]:
            raise ValueError("year out of range")
    except ValueError:
        raise OpsledgerError(
            Problem(
                f"{shown(text, 40)} is not an ISO 8601 date-time (years {YEARS[0]} to {YEARS[1]})",
                field=option,
                fix="write e.g. 2026-12-01T20:30:00+01:00",
            )
        ) from None
    if moment.tzinfo is None:
        raise OpsledgerError(
            Problem(f"{option} has no timezone", field=option, fix="add an offset, e.g. +01:00")
        )
    return moment


# Who signs what: commands that commit as a person (approve, change review) take these two.
person_option = click.option(
    "--as",
    "person",
    envvar="OPSLEDGER_PERSON",
    required=True,
    show_envvar=True,
    help="Your person id in policies/people.yml; set OPSLEDGER_PERSON to stop typing it.",
)
signing_key_option = click.option(
    "--key",
    "signing_key",
    envvar="OPSLEDGER_SIGNING_KEY",
    type=click.Path(path_type=Path),
    help="SSH private key that signs the commit (or $OPSLEDGER_SIGNING_KEY).",
)


# -v/-vv/...: ansible-playbook's verbosity for commands that run it (plan, apply).
verbosity_option = click.option(
    "-v",
    "--verbose",
    "verbosity",
    count=True,
    help="Pass -v (repeat: -vv, up to -vvvv) to ansible-playbook; its output goes to stderr.",
)


# Which branch is trusted: policies, people and keys, and run records come from it.
base_option = click.option(
    "--base",
    "base",
    envvar="OPSLEDGER_BASE",
    help="The protected branch to trust (or $OPSLEDGER_BASE; default main).",
)


def output_folder(path: Path | None, option: str) -> None:
    """Refuse an output file whose folder does not exist, before any work is done."""
    if path is None:
        return
    try:
        exists = path.parent.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise OpsledgerError(
            Problem(f"unusable path: {exc.strerror}", str(path), option, "pick another file")
        ) from None
    if not exists:
        raise OpsledgerError(
            Problem("no such folder", str(path.parent), option, "create it first or pick a file")
        )


def write_output(path: Path, text: str, option: str, *, append: bool = False) -> None:
    """Write (or append) an output file; an unwritable one is exit 2, not a traceback."""
    try:
        with path.open("a" if append else "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise OpsledgerError(
            Problem(f"cannot write: {exc.strerror}", str(path), option, "choose another file")
        ) from None


class _WaitSeconds(click.FloatRange):
    """Seconds to wait for another run's locks: 0 to a day, and a real number (not nan)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


wait_seconds = _WaitSeconds(0, 86400)


def one_or_due(named: object, due: bool, what: str, example: str) -> None:
    """Commands that run one named thing or everything due take exactly one of the two."""
    if bool(named) == due:
        raise OpsledgerError(Problem(f"give {what} or --due", field=what, fix=f"e.g. {example}"))
