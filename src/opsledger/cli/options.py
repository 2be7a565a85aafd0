"""Parsing of option values shared by several commands."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from opsledger.errors import OpsledgerError, Problem


def aware_time(text: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 date-time with a timezone, or None when the option was not given.

    Times without an offset are refused: a change window or a decision must mean the same
    instant on a laptop and in CI.
    """
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise OpsledgerError(
            Problem(
                f"{text!r} is not an ISO 8601 date-time",
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
    help="Your person id in policies/people.yml (or $OPSLEDGER_PERSON).",
)
signing_key_option = click.option(
    "--key",
    "signing_key",
    envvar="OPSLEDGER_SIGNING_KEY",
    type=click.Path(path_type=Path),
    help="SSH private key that signs the commit (or $OPSLEDGER_SIGNING_KEY).",
)


# Which branch is trusted: policies, people and keys, and run records come from it.
base_option = click.option(
    "--base",
    "base",
    envvar="OPSLEDGER_BASE",
    help="The protected branch to trust (or $OPSLEDGER_BASE; default main).",
)


def one_or_due(named: object, due: bool, what: str, example: str) -> None:
    """Commands that run one named thing or everything due take exactly one of the two."""
    if bool(named) == due:
        raise OpsledgerError(Problem(f"give {what} or --due", field=what, fix=f"e.g. {example}"))
