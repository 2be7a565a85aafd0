"""Where tables go: a terminal gets its width, a pipe or a CI log gets every character.

rich sizes a console that is not a terminal to 80 columns and cuts table cells with "…", so a
CI log showed runbook names and reasons truncated. Off a terminal the console is made wide
enough that nothing is cut (the lines are as long as their content), and NO_COLOR or
`opsledger --no-color` turns colour off.
"""

from __future__ import annotations

import os

from rich.console import Console

WIDE = 4000  # columns off a terminal: no table in opsledger comes near it


def console(*, minimum: int = 0, stderr: bool = False) -> Console:
    """A rich console for tables: the terminal's width (at least `minimum`), or WIDE.

    Example:
        console(minimum=120).print(table)
    """
    probe = Console(stderr=stderr)
    no_color = bool(os.environ.get("NO_COLOR"))
    if not probe.is_terminal:
        return Console(stderr=stderr, width=WIDE, no_color=no_color, soft_wrap=False)
    return Console(stderr=stderr, width=max(probe.width, minimum), no_color=no_color)
