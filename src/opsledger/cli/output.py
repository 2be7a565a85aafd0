"""Where tables go: a terminal gets its width, a pipe or a CI log gets every character.

rich sizes a console that is not a terminal to 80 columns and cuts table cells with "…", so a
CI log showed runbook names and reasons truncated. Off a terminal the console is made wide
enough that nothing is cut (the lines are as long as their content), and NO_COLOR or
`opsledger --no-color` turns colour off.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

WIDE = 4000  # columns off a terminal: no table in opsledger comes near it


class _LogConsole(Console):
    """Off a terminal: a table's title starts the line instead of being centred over it.

    A wide table's centred title began hundreds of spaces in (a CI log's viewer wraps, so the
    title of a decision sat a screen away from its rows, or past the right edge).
    """

    def print(self, *objects, **kwargs):  # type: ignore[no-untyped-def]
        for item in objects:
            if isinstance(item, Table):
                item.title_justify = "left"
        super().print(*objects, **kwargs)


def console(*, minimum: int = 0, stderr: bool = False) -> Console:
    """A rich console for tables: the terminal's width (at least `minimum`), or WIDE.

    Example:
        console(minimum=120).print(table)
    """
    probe = Console(stderr=stderr)
    # NO_COLOR: no escape codes at all (rich's no_color keeps bold and italics)
    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    if not probe.is_terminal:
        return _LogConsole(stderr=stderr, width=WIDE, soft_wrap=False, **plain)
    return Console(stderr=stderr, width=max(probe.width, minimum), **plain)


def left_out(lines: list[str], what: str) -> None:
    """Name each change a log or calendar left out, then exit 1: incomplete never reads as whole."""
    import click

    for line in lines:
        click.secho(
            f"warning: not in this {what}: {line} (opsledger change validate names the fix)",
            fg="yellow",
            err=True,
        )
    if lines:
        raise SystemExit(1)
