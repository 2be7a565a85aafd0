"""The one exception type for problems a user can fix, and the exit codes the CLI maps them to.

Every use case validates its input up front and raises `OpsledgerError` with one `Problem` per
thing that is wrong, so a user sees every problem at once (file, field, what to do) instead of
fixing them one run at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Exit codes are part of the CLI contract: CI pipelines branch on them.
EXIT_FAILED = 1  # the operation ran and did not succeed (e.g. a host failed)
EXIT_INVALID = 2  # invalid input or environment; nothing was run
EXIT_DENIED = 3  # a policy denied the operation; nothing was run
EXIT_LOCKED = 4  # another operation holds the lock


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int = 200) -> str:
    """Text as an error line may carry it: control characters escaped, cut at `limit`.

    Error lines are read by people and parsed by pipelines: a value with a newline must not
    forge a second line, and a megabyte value must not flood a terminal or a CI log.
    """
    flat = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shown(value: Any, limit: int = 60) -> str:
    """A value quoted for an error message (like !r), on one line and cut at `limit`."""
    return one_line(repr(value), limit)


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: where it is and what the user should do about it.

    Every part is made one line and bounded on creation, whatever a caller put in it.
    """

    message: str
    file: str | None = None
    field: str | None = None
    fix: str | None = None

    def __post_init__(self) -> None:
        for name, limit in (("message", 600), ("file", 200), ("field", 120), ("fix", 240)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, one_line(str(value), limit))

    def __str__(self) -> str:
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file or self.field:
            where = f"{self.file or self.field}: "
        text = f"{where}{self.message}"
        return f"{text} — {self.fix}" if self.fix else text


class OpsledgerError(Exception):
    """A problem the user can act on; carries the exit code the CLI should return."""

    def __init__(self, problems: list[Problem] | Problem | str, exit_code: int = EXIT_INVALID):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.exit_code = exit_code
        super().__init__("\n".join(str(p) for p in self.problems))


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates, i.e. bytes that were not UTF-8.

    Python decodes such bytes (an argument, git's output) as surrogates no encoder accepts.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
