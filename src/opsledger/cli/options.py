"""Parsing of option values shared by several commands."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from opsledger.errors import OpsledgerError, Problem, shown
from opsledger.timespec import DURATION_EXAMPLES, format_duration, parse_duration, parse_time


class TimeType(click.ParamType):
    """An option's time in the one syntax (opsledger.timespec): ISO 8601 with a zone, now, +2h.

    A bad value is an OpsledgerError naming the option and the fix: one `error:` line, exit 2.
    """

    name = "time"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, dt.datetime):
            return value
        return parse_time(value, _option_name(param))


class DurationType(click.ParamType):
    """An option's duration in the one syntax (opsledger.timespec), within the option's bounds.

    `bare_seconds`: a plain number still means seconds (`--wait 900` in existing pipelines).
    """

    name = "duration"

    def __init__(
        self,
        minimum: dt.timedelta = dt.timedelta(0),
        maximum: dt.timedelta = dt.timedelta(days=3660),
        *,
        bare_seconds: bool = False,
    ) -> None:
        self.minimum, self.maximum, self.bare_seconds = minimum, maximum, bare_seconds

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, dt.timedelta):
            length = value
        elif isinstance(value, int | float) or (
            self.bare_seconds and isinstance(value, str) and _SECONDS.fullmatch(value)
        ):
            length = dt.timedelta(seconds=float(value))
        else:
            length = parse_duration(value, _option_name(param))
        if not self.minimum <= length <= self.maximum:
            low, high = format_duration(self.minimum), format_duration(self.maximum)
            raise OpsledgerError(
                Problem(
                    f"{shown(str(value), 40)} is not a duration of {low} to {high}",
                    field=_option_name(param),
                    fix=f"write e.g. {DURATION_EXAMPLES}",
                )
            )
        return length


_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")


def _option_name(param: click.Parameter | None) -> str:
    if param is None:
        return "value"
    return max(param.opts, key=len) if param.opts else (param.name or "value").upper()


TIME = TimeType()


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


# Seconds to wait for another run's locks: up to a day.
wait_duration = DurationType(dt.timedelta(0), dt.timedelta(days=1), bare_seconds=True)


def one_or_due(named: object, due: bool, what: str, example: str) -> None:
    """Commands that run one named thing or everything due take exactly one of the two."""
    if bool(named) == due:
        raise OpsledgerError(Problem(f"give {what} or --due", field=what, fix=f"e.g. {example}"))


class _Formats(click.Choice):
    """The formats a command renders; old names (`table`, `markdown`) still read as new ones."""

    def __init__(self, formats: tuple[str, ...], aliases: dict[str, str]) -> None:
        super().__init__(formats)
        self.aliases = aliases

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        return super().convert(self.aliases.get(value, value), param, ctx)


def output_option(
    *formats: str, default: str = "text", aliases: dict[str, str] | None = None, help: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format` with the formats this command renders, and `--json` meaning `--format json`.

    One output grammar on every command that prints a result (README, Conventions): text for
    people, json for pipelines, md and html where a renderer exists. The command receives
    `fmt`; `--json` with another `--format` is refused rather than one silently winning.

    Example:
        @output_option("text", "md", "json")
        def plan(change_id: str, fmt: str) -> None: ...
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(*args: Any, fmt: str, as_json: bool = False, **kwargs: Any) -> Any:
            given = click.get_current_context().get_parameter_source("fmt")
            if as_json and fmt != "json" and given is not ParameterSource.DEFAULT:
                raise OpsledgerError(
                    Problem(
                        f"--json and --format {fmt} ask for two formats",
                        field="--format",
                        fix="give one of them (--json is --format json)",
                    )
                )
            return command(*args, fmt="json" if as_json else fmt, **kwargs)

        if "json" in formats:
            run = click.option(
                "--json", "as_json", is_flag=True, help="The same as --format json."
            )(run)
        return click.option(
            "--format",
            "fmt",
            type=_Formats(formats, aliases or {}),
            default=default,
            show_default=True,
            help=help or None,
        )(run)

    return decorate
