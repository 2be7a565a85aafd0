"""The `opsledger` command line: parses arguments, calls the library, prints results.

The root group (click and the table of commands) is in cli/root.py and loads when a command
runs. `opsledger --help` on a terminal of 80 columns or more (or off one) prints ROOT_HELP,
click's own rendering of the root help kept as text in cli/roothelp.py: importing click
alone costs more than the start-up target of `--help` (60 ms over `python -c pass`). A unit
test compares the text with what click prints; `root.write_root_help()` rewrites it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from opsledger.cli.roothelp import ENV_OPTIONS, ROOT_HELP

# What click's formatter wraps the help at: the terminal's columns capped at 80 (less 2).
_KEPT_WIDTH = 80


def _columns() -> int:
    """The terminal's columns as click reads them (shutil.get_terminal_size, fallback 80)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or _KEPT_WIDTH


def _kept_help_applies(args: list[str]) -> bool:
    """Whether click would print exactly ROOT_HELP for these arguments, here."""
    if args not in (["--help"], ["-h"]) or _columns() < _KEPT_WIDTH:
        return False
    # A variable that is not UTF-8 is refused before any help (root.not_utf8_problems).
    try:
        for name in ENV_OPTIONS:
            os.environ.get(name, "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def main() -> None:
    """The console script: `opsledger ...` (pyproject.toml).

    Example:
        opsledger --help
    """
    if _kept_help_applies(sys.argv[1:]):
        sys.stdout.write(ROOT_HELP)
        sys.stdout.flush()
        sys.exit(0)
    from opsledger.cli import root  # click and the table: every other invocation

    root.main()


def __getattr__(name: str) -> Any:
    """`from opsledger.cli import cli` (and the root's other names) load cli/root.py then."""
    if name in ("cli", "COMMANDS", "_Group", "not_utf8_problems"):
        from opsledger.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
